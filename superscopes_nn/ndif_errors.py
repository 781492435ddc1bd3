"""Remote (NDIF) failures as one exception with a one-line, actionable message.

A remote run can fail in many shapes: the socket is refused, the websocket
handshake gets an HTTP status, the POST gets one (nnsight wraps that in
``RemoteError("Failed to send request: ...")``), or the job itself fails on the
server (``RemoteError(description)`` from an ERROR status). :func:`call_remote`
runs a function, retries what is worth retrying and turns everything else into
:class:`NDIFError`::

    from superscopes_nn.ndif_errors import NDIFError, call_remote

    try:
        df = call_remote(lambda: run_rows(model, rows, remote=True), host="https://api.ndif.us")
    except NDIFError as err:
        print(err)             # e.g. "NDIF rejected the API key (HTTP 401): set it with ..."
        err.__cause__          # the original exception
        err.failure.transient  # was it worth retrying?

Transient (retried with exponential backoff ``backoff * 2**k``, ``retries``
times after the first try): connection refused / reset, timeouts, a websocket
closed mid-stream, HTTP 5xx and 429. Permanent (raised at once): HTTP 401/403
(API key), 404 (model not hosted), any other 4xx, a job that failed on the
server, and an nnsight client/server version mismatch. Exceptions that are not
remote failures (a bug, a bad argument, Ctrl-C) pass through unchanged.

:func:`classify` is the pure part (exception -> :class:`Failure` or ``None``)
and is what the tests pin down.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

_SEND_PREFIX = "Failed to send request:"
_VERSION_RE = re.compile(r"version", re.I)
_VERSION_HINT_RE = re.compile(r"mismatch|incompatib|unsupported|not supported|upgrade|downgrade|requires|must be|outdated",
                              re.I)
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}


@dataclass(frozen=True)
class Failure:
    """What went wrong: ``transient`` (worth retrying) and a one-line ``message``
    naming the cause and what to do. ``status`` is the HTTP status when there was one."""

    transient: bool
    message: str
    status: int | None = None


class NDIFError(Exception):
    """A remote run failed; ``str(err)`` says why and what to do, ``err.__cause__``
    is the original exception, ``err.failure`` the classification, ``err.attempts``
    how many times the call was tried."""

    def __init__(self, failure: Failure, attempts: int = 1):
        super().__init__(failure.message)
        self.failure = failure
        self.attempts = attempts


# ------------------------------------------------------------------ classification


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    """``exc`` and its causes/contexts, outermost first (bounded, cycle-safe)."""
    out: list[BaseException] = []
    while exc is not None and len(out) < limit and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _one_line(text: str, width: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _detail_from_body(body) -> str:
    """The server's explanation from an HTTP error body (FastAPI: ``{"detail": ...}``)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return _one_line(body)
    if isinstance(data, dict):
        data = data.get("detail", data.get("message", data))
    return _one_line(data if isinstance(data, str) else json.dumps(data))


def _is_version_mismatch(text: str) -> bool:
    return bool(text and _VERSION_RE.search(text) and _VERSION_HINT_RE.search(text))


def _client_version() -> str:
    try:
        from importlib.metadata import version

        return version("nnsight")
    except Exception:  # noqa: BLE001 - a source checkout has no distribution
        return "unknown"


def _version_failure(text: str, status: int | None = None) -> Failure:
    return Failure(False, f"nnsight version mismatch: client {_client_version()}, server says {_one_line(text)!r}: "
                          "install the nnsight version NDIF runs (pip install -U nnsight==<server version>)", status)


def _where(host: str | None) -> str:
    return f"NDIF at {host}" if host else "NDIF"


def http_failure(status: int, detail: str = "", host: str | None = None, model: str | None = None) -> Failure:
    """Classify an HTTP status (with the server's ``detail`` text) from the handshake or the POST."""
    said = f": server says {detail!r}" if detail else ""
    if _is_version_mismatch(detail):
        return _version_failure(detail, status)
    if status in (401, 403):
        return Failure(False, f"NDIF rejected the API key (HTTP {status}){said}: set it with "
                              "`nnsight.CONFIG.set_default_api_key(...)` or NDIF_API_KEY", status)
    if status == 404:
        what = f"model {model!r}" if model else "the model"
        return Failure(False, f"{_where(host)} does not serve {what} (HTTP 404){said}: check the model name "
                              "against https://nnsight.net/status or run locally (remote=False)", status)
    if status == 429:
        return Failure(True, f"{_where(host)} is rate-limiting requests (HTTP 429){said}: wait and retry, "
                             "or send fewer / larger batches", status)
    if 500 <= status < 600:
        return Failure(True, f"{_where(host)} had a server error (HTTP {status}){said}: retry later, "
                             "or check https://nnsight.net/status", status)
    if 400 <= status < 500:
        return Failure(False, f"{_where(host)} rejected the request (HTTP {status}){said}", status)
    return Failure(False, f"{_where(host)} answered with unexpected HTTP {status}{said}", status)


def _network_failure(kind: str, host: str | None) -> Failure:
    return Failure(True, f"could not reach {_where(host)} ({kind}): check the host / network")


def classify(exc: BaseException, host: str | None = None, model: str | None = None) -> Failure | None:
    """The :class:`Failure` an exception from a remote call stands for, or ``None``
    when it is not a remote failure (it should propagate unchanged)."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - nnsight depends on httpx
        httpx = None
    try:
        import websocket
    except ImportError:  # pragma: no cover - nnsight depends on websocket-client
        websocket = None
    from nnsight.intervention.backends.remote import RemoteError

    for e in _chain(exc):
        if isinstance(e, NDIFError):
            return e.failure
        # --- HTTP status: websocket handshake or the POST (wrapped by nnsight in RemoteError)
        if websocket is not None and isinstance(e, websocket.WebSocketBadStatusException):
            return http_failure(int(e.status_code), _detail_from_body(e.resp_body), host, model)
        if httpx is not None and isinstance(e, httpx.HTTPStatusError):
            return http_failure(e.response.status_code, _detail_from_body(e.response.content), host, model)
        # --- transport problems
        if httpx is not None and isinstance(e, httpx.TimeoutException):
            return _network_failure("timed out", host)
        if httpx is not None and isinstance(e, httpx.ConnectError):
            text = str(e).lower()
            if "name or service" in text or "nodename" in text or "getaddrinfo" in text:
                return Failure(False, f"could not resolve the host of {_where(host)} ({_one_line(e)}): check the host")
            kind = "connection refused" if "refused" in text else f"connection failed: {_one_line(e)}"
            return _network_failure(kind, host)
        if httpx is not None and isinstance(e, httpx.TransportError):
            return _network_failure(f"{type(e).__name__}: {_one_line(e)}", host)
        if websocket is not None and isinstance(e, websocket.WebSocketTimeoutException):
            return _network_failure("websocket timed out", host)
        if websocket is not None and isinstance(e, websocket.WebSocketConnectionClosedException):
            return _network_failure("websocket closed by the server or the network", host)
        if websocket is not None and isinstance(e, websocket.WebSocketAddressException):
            return Failure(False, f"could not resolve the host of {_where(host)} ({_one_line(e)}): check the host")
        if isinstance(e, socket.gaierror):
            return Failure(False, f"could not resolve the host of {_where(host)} ({_one_line(e)}): check the host")
        if isinstance(e, ConnectionRefusedError):
            return _network_failure("connection refused", host)
        if isinstance(e, (TimeoutError, socket.timeout)):
            return _network_failure("timed out", host)
        if isinstance(e, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return _network_failure("connection reset", host)
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return _network_failure(_one_line(e.strerror or e), host)
        # --- the job itself failed on the server (an ERROR status)
        if isinstance(e, RemoteError):
            text = str(e)
            if text.startswith(_SEND_PREFIX):
                continue  # look at its cause (the httpx error) first
            if _is_version_mismatch(text):
                return _version_failure(text)
            return Failure(False, f"NDIF job failed on the server: {_one_line(text) or '(no message)'}")
    for e in _chain(exc):  # a RemoteError("Failed to send request: ...") whose cause told us nothing
        if isinstance(e, RemoteError):
            return Failure(False, f"could not send the request to {_where(host)}: {_one_line(e)}")
    return None


# ------------------------------------------------------------------ retrying


def call_remote(fn: Callable[[], T], *, retries: int = 3, backoff: float = 1.0,
                sleep: Callable[[float], None] = time.sleep, host: str | None = None,
                model: str | None = None) -> T:
    """Run ``fn()``; retry transient remote failures, raise :class:`NDIFError` for
    the rest (the original exception as ``__cause__``).

    ``retries``: extra tries after the first (so at most ``retries + 1`` calls);
    the k-th retry waits ``backoff * 2**k`` seconds via ``sleep``. ``host`` /
    ``model`` only make the messages more specific.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise ValueError(f"backoff must be a number >= 0 (seconds), got {backoff!r}")
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below, unknown ones re-raised
            if isinstance(exc, NDIFError):
                raise
            failure = classify(exc, host=host, model=model)
            if failure is None:
                raise
            if not failure.transient:
                raise NDIFError(failure, attempt) from exc
            if attempt > retries:
                tries = "1 try" if attempt == 1 else f"{attempt} tries"
                msg = failure.message.replace(": ", f" after {tries}: ", 1) if ": " in failure.message \
                    else f"{failure.message} after {tries}"
                raise NDIFError(Failure(True, msg, failure.status), attempt) from exc
            sleep(backoff * 2 ** (attempt - 1))


def remote_host(remote) -> str | None:
    """The host a ``remote=`` argument sends to (``None`` for local runs)."""
    if not remote or remote == "local":
        return None
    if isinstance(remote, str):
        return remote
    from nnsight import CONFIG

    return CONFIG.API.HOST
