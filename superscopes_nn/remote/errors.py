"""NDIF's failures, read as NDIF writes them, as one exception with a one-line message.

The texts come from NDIF's own reference (``docs/reference/error-messages.md`` in the
``ndif`` 0.1.2 sdist). Every failure gets a ``kind``:

* ``retry``: NDIF says retrying helps (server restarting, replica evicted, 503/504/500);
  :func:`call_remote` retries these with exponential backoff;
* ``fix``: fix something first (API key, nnsight / transformers / python version, the
  block, the batch: an out-of-memory job says "lower max_batch_size"); never retried;
* ``permanent``: retrying or re-running as is cannot help here (an operator cancelled it,
  the object store is misconfigured, the job may still be running and must not run twice).

::

    from superscopes_nn.remote.errors import NDIFError, call_remote

    try:
        df = call_remote(lambda: run_rows(model, rows, remote=True), host="https://api.ndif.us")
    except NDIFError as err:
        print(err)                  # one line: what NDIF said, what to do
        err.failure.kind            # "retry" | "fix" | "permanent"
        err.__cause__               # the original exception

A job that was accepted is never resubmitted because a connection dropped: NDIF keeps
running it and nothing replays it. :class:`~superscopes_nn.remote.backend.NDIFBackend` submits once and waits on the
same job id (nnsight's non-blocking mode, ``GET /response/{id}``), re-polling through
network blips; a dropped blocking websocket is reported, not retried.
"""

from __future__ import annotations

import errno
import json
import socket
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..structure.hub import hub_endpoint

T = TypeVar("T")
__all__ = ["RETRY", "FIX", "PERMANENT", "TEXTS", "Failure", "NDIFError", "classify", "classify_text", "call_remote",
           "remote_host"]

RETRY, FIX, PERMANENT = "retry", "fix", "permanent"
_SEND_PREFIX = "Failed to send request:"
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
                     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}
_KEY_HINT = "set it with `nnsight.CONFIG.set_default_api_key(...)` or NDIF_API_KEY"
_COMPARE = "compare client and server with `from nnsight import ndif; print(ndif.compare())`"
_OOM = "lower max_batch_size (or shorter prompts / fewer saved values)"

# (text NDIF writes, kind, what to do): matched as a prefix of the server's sentence
# (``Failed to send request:`` stripped); the first match wins.
TEXTS: list[tuple[str, str, str]] = [
    # ingress (HTTP status on POST /request)
    ("Missing or invalid API key.", FIX, _KEY_HINT),
    ("Invalid API key format:", FIX, _KEY_HINT + " (a full key, not a truncated paste or a placeholder)"),
    ("Invalid API key.", FIX, _KEY_HINT),
    ("Invalid JSON:", FIX, "client/server schema mismatch: upgrade nnsight; " + _COMPARE),
    ("Service temporarily unavailable: compute backend is reconnecting.", RETRY, "retry in a few minutes"),
    ("Auth backend unavailable.", RETRY, "retry later"),
    ("Internal server error.", RETRY, "retry later; report it to NDIF if it persists"),
    ("Could not retrieve cluster", RETRY, "retry later"),
    ("Timed out waiting for cluster", RETRY, "retry later"),
    # the client version gate (400)
    ("Client nnsight version was not provided.", FIX, "install nnsight from PyPI (pip install --upgrade nnsight)"),
    ("Malformed nnsight version", FIX, "install a released nnsight (pip install --upgrade nnsight)"),
    ("Client nnsight version", FIX, "upgrade nnsight to the version NDIF runs; " + _COMPARE),
    ("Client python version was not provided.", FIX, "upgrade nnsight, which sends its python version"),
    ("Malformed python version", FIX, "use a released CPython"),
    ("Client python version", FIX, "use the python version NDIF requires (a newer interpreter)"),
    # ERROR responses (the job was accepted)
    ("OutOfOrderError:", FIX, "the block reads modules out of forward-pass order: fix the code"),
    ("ValueError: A barrier was never reached", FIX, "fix the barrier count in the block"),
    ("Your request payload could not be read", RETRY, "re-send once; if it repeats, " + _COMPARE),
    ("The model architecture on this server doesn't match", FIX,
     "client and server built different module trees (usually transformers); " + _COMPARE),
    ("Your job exceeded the execution timeout", FIX, "send smaller jobs: " + _OOM.split(" (")[0]),
    ("Your job was cancelled or preempted by the server.", RETRY, "re-submit"),
    ("Request cancelled by operator.", PERMANENT, "an operator stopped it; re-run when you mean to"),
    ("Replica was evicted while processing your request.", RETRY, "retry later"),
    ("Error submitting request to model deployment.", RETRY, "retry later"),
    ("Error provisioning model.", RETRY, "retry later"),
    ("Error starting model.", RETRY, "retry later"),
    ("Could not deploy this model.", FIX, "check the model id (typo, gated repo, or a full cluster: see the reason)"),
    ("Critical server error occurred.", RETRY, "retry later"),
]
_OOM_MARKERS = ("OutOfMemoryError", "CUDA out of memory", "out of memory")
_GREENLET = ("Cannot switch to a different thread", "parent cannot be on a different thread")


@dataclass(frozen=True)
class Failure:
    """What went wrong: ``kind`` (retry / fix / permanent), a one-line ``message``
    naming the cause and what to do, the HTTP ``status`` and NDIF ``job_id`` when known."""

    kind: str
    message: str
    status: int | None = None
    job_id: str | None = None

    @property
    def transient(self) -> bool:
        return self.kind == RETRY


class NDIFError(Exception):
    """A remote run failed; ``str(err)`` says why and what to do, ``err.__cause__``
    is the original exception, ``err.failure`` the classification, ``err.attempts``
    how many times the call was tried."""

    def __init__(self, failure: Failure, attempts: int = 1):
        super().__init__(failure.message)
        self.failure = failure
        self.attempts = attempts


def _chain(exc: BaseException, limit: int = 8) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < limit and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _one_line(text, width: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _last_line(text: str) -> str:
    """A traceback's last non-empty line (the exception NDIF's job raised)."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _where(host: str | None) -> str:
    return f"NDIF at {host}" if host else "NDIF"


def classify_text(text: str, status: int | None = None, host: str | None = None) -> Failure:
    """Classify a sentence NDIF sent (an ingress ``detail`` or a job's ERROR description)."""
    said = str(text).strip()
    if said.startswith(_SEND_PREFIX):
        said = said[len(_SEND_PREFIX):].strip()
    code = f" (HTTP {status})" if status else ""
    for prefix, kind, todo in TEXTS:
        if said.startswith(prefix):
            return Failure(kind, f"{_where(host)}{code}: {_one_line(said, 200)}: {todo}", status)
    last = _last_line(said)
    if any(m in said for m in _OOM_MARKERS):
        return Failure(FIX, f"NDIF job ran out of memory ({_one_line(last, 160)}): {_OOM}", status)
    if any(m in last for m in _GREENLET):
        return Failure(RETRY, f"NDIF server fault ({_one_line(last, 160)}): retry later", status)
    if "Traceback" in said or status is None:  # the block raised: its last line is the cause
        shown = last if "Traceback" in said else said
        return Failure(FIX, f"NDIF job failed: {_one_line(shown, 240)}: fix the code it ran "
                            "(full traceback in err.__cause__)", status)
    if status in (401, 403):
        return Failure(FIX, f"{_where(host)} rejected the API key{code}: {_one_line(said, 160)}: {_KEY_HINT}", status)
    if status == 429 or (status is not None and status >= 500):
        return Failure(RETRY, f"{_where(host)}{code}: {_one_line(said, 160) or 'server error'}: retry later", status)
    return Failure(FIX, f"{_where(host)} rejected the request{code}: {_one_line(said, 200)}", status)


def _body_detail(response) -> str:
    text = _body(response)
    try:
        data = json.loads(text)
    except ValueError:
        return _one_line(text)
    if isinstance(data, dict):
        data = data.get("detail", data.get("message", data))
    return _one_line(data if isinstance(data, str) else json.dumps(data))


def _url_of(e) -> str:
    try:
        return str(e.request.url)
    except (AttributeError, RuntimeError):
        return ""


def _is_ndif_url(url: str) -> bool:
    """NDIF's own API (POST /request, GET /response/{id}, ...), not a presigned object-store URL."""
    path = url.split("?")[0].rstrip("/")
    return path.endswith(("/request", "/subscribe", "/status", "/env", "/ping")) or "/response/" in path


def _body(response) -> str:
    try:
        return response.text or ""
    except Exception:  # noqa: BLE001 - nnsight streams the download: the body may be unread / closed
        try:
            response.read()
            return response.text or ""
        except Exception:  # noqa: BLE001
            return ""


def _expired(url: str) -> bool:
    """A presigned URL past ``X-Amz-Date + X-Amz-Expires`` (NDIF signs for one hour)."""
    from datetime import datetime, timedelta, timezone
    from urllib.parse import parse_qs, urlsplit

    q = {k.lower(): v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    try:
        signed = datetime.strptime(q["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        return signed + timedelta(seconds=int(q["x-amz-expires"])) < datetime.now(timezone.utc)
    except (KeyError, ValueError):
        return False


def _download_failure(e, url: str) -> Failure:
    """The job COMPLETED; fetching its result from the presigned object-store URL failed."""
    where = url.split("?")[0]
    if hasattr(e, "response") and getattr(e, "response", None) is not None:
        status, body = e.response.status_code, _body(e.response)
        if status == 403 and ("Request has expired" in body or _expired(url)):
            return Failure(FIX, f"result download failed (HTTP 403 Request has expired, {where}): the presigned "
                                "URL lives one hour; re-run the job", status)
        if status == 403 and "SignatureDoesNotMatch" in body:
            return Failure(PERMANENT, f"result download failed (HTTP 403 SignatureDoesNotMatch, {where}): "
                                      "NDIF's object store is misconfigured; report it to NDIF", status)
        if status == 404 and "NoSuchBucket" in body:
            return Failure(PERMANENT, f"result download failed (HTTP 404 NoSuchBucket, {where}): another object "
                                      "store answered at NDIF's public URL; report it to NDIF", status)
        return Failure(RETRY if status >= 500 else PERMANENT,
                       f"result download failed (HTTP {status}, {where}): {_one_line(body, 120)}", status)
    return Failure(PERMANENT, f"result download failed ({type(e).__name__}: {_one_line(e, 120)}, {where}): the "
                              "object store NDIF signed the URL for is unreachable from here; report it to NDIF")


def _network(kind: str, host: str | None) -> Failure:
    return Failure(RETRY, f"could not reach {_where(host)} ({kind}): check the host / network")


def classify(exc: BaseException, host: str | None = None, model: str | None = None) -> Failure | None:
    """The :class:`Failure` an exception from a remote call stands for, or ``None``
    when it is not a remote failure (it should propagate unchanged)."""
    import httpx
    import websocket
    from nnsight.intervention.backends.remote import RemoteError

    for e in _chain(exc):
        if isinstance(e, NDIFError):
            return e.failure
        if isinstance(e, httpx.HTTPError) and (url := _url_of(e)) and not _is_ndif_url(url):
            if url.startswith(hub_endpoint()):  # nnsight's model-id lookup, not NDIF
                return Failure(FIX, f"could not reach the Hugging Face hub ({url.split('?')[0]}: "
                                    f"{type(e).__name__}: {_one_line(e, 120)}) to look up the model id; "
                                    f"{_where(host)} was not contacted: check the network, or set HF_HUB_OFFLINE=1")
            return _download_failure(e, url)
        if isinstance(e, httpx.HTTPStatusError):
            return classify_text(_body_detail(e.response), e.response.status_code, host)
        if isinstance(e, websocket.WebSocketBadStatusException):  # handshake: nothing was submitted yet
            return classify_text(str(e.resp_body or e), int(e.status_code), host)
        if isinstance(e, websocket.WebSocketConnectionClosedException):
            return Failure(PERMANENT, f"the websocket to {_where(host)} closed mid-run: a job already accepted keeps "
                                      "running there and is not resubmitted (it would run twice); use "
                                      "superscopes_nn.remote.backend.NDIFBackend (what remote=True runs), which "
                                      "waits on the job id")
        if isinstance(e, httpx.TimeoutException):
            return _network("timed out", host)
        if isinstance(e, (httpx.ConnectError, websocket.WebSocketAddressException, socket.gaierror)):
            text = str(e).lower()
            if isinstance(e, (websocket.WebSocketAddressException, socket.gaierror)) or \
                    any(s in text for s in ("name or service", "nodename", "getaddrinfo")):
                return Failure(FIX, f"could not resolve the host of {_where(host)} ({_one_line(e, 120)}): "
                                    "check the host")
            return _network("connection refused" if "refused" in text else f"connect failed: {_one_line(e)}", host)
        if isinstance(e, httpx.TransportError):
            return _network(f"{type(e).__name__}: {_one_line(e)}", host)
        if isinstance(e, websocket.WebSocketTimeoutException):
            return _network("websocket timed out", host)
        if isinstance(e, ConnectionRefusedError):
            return _network("connection refused", host)
        if isinstance(e, (TimeoutError, socket.timeout)):
            return _network("timed out", host)
        if isinstance(e, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return _network("connection reset", host)
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return _network(_one_line(e.strerror or e), host)
        if isinstance(e, RemoteError):
            text = str(e)
            if text.startswith(_SEND_PREFIX) and (e.__cause__ or e.__context__):
                continue  # the httpx error beneath says more
            return classify_text(text, None if not text.startswith(_SEND_PREFIX) else 0, host)
    return None


def call_remote(fn: Callable[[], T], *, retries: int = 3, backoff: float = 1.0,
                sleep: Callable[[float], None] = time.sleep, host: str | None = None,
                model: str | None = None) -> T:
    """Run ``fn()``; retry what NDIF says to retry, raise :class:`NDIFError` for the rest.

    ``retries``: extra tries after the first; the k-th waits ``backoff * 2**k`` seconds.
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
            if isinstance(exc, NDIFError):  # already classified (e.g. NDIFBackend lost its job): never again
                raise
            failure = classify(exc, host=host, model=model)
            if failure is None:
                raise
            if failure.kind != RETRY:
                raise NDIFError(failure, attempt) from exc
            if attempt > retries:
                tries = "1 try" if attempt == 1 else f"{attempt} tries"
                msg = failure.message.replace("): ", f") after {tries}: ", 1) if "): " in failure.message \
                    else f"{failure.message} (after {tries})"
                raise NDIFError(Failure(RETRY, msg, failure.status, failure.job_id), attempt) from exc
            sleep(backoff * 2 ** (attempt - 1))


def remote_host(remote) -> str | None:
    """The host a ``remote=`` argument sends to (``None`` for local runs and ``"local"`` in any case;
    parsed by :func:`~superscopes_nn.core.validate.check_remote`)."""
    from ..core.validate import check_remote

    parsed = check_remote(remote)
    if not parsed.is_ndif:
        return None
    if parsed.host:
        return parsed.host
    from nnsight import CONFIG

    return CONFIG.API.HOST

