"""A RemoteBackend that never runs a job twice: submit once, wait on the same job id.

nnsight's blocking mode holds one ``/subscribe`` websocket; if it drops while the job runs,
NDIF keeps running it and nothing replays it (NDIF's error reference, "The websocket closes
mid-run"), and a blocking job stores nothing to poll. :class:`NDIFBackend` submits in
nnsight's non-blocking mode (``POST /request``, every status stored under the job id) and
polls ``GET /response/{id}`` until COMPLETED, re-polling through network failures, then
pushes the saved values into the caller's frame exactly as the blocking mode does::

    backend = remote_backend(model)                      # or NDIFBackend(model.to_model_key(), ...)
    with model.session(backend=backend): ...

Everything a host sends back is read as data only (:mod:`superscopes_nn.remote.safe_load`): the
result blob (downloaded or inline), a binary websocket frame, the JSON status (bounded); a result's
names must be names its session's code uses. A plain-http host other than loopback is refused at
construction unless ``allow_insecure_http=True`` (:mod:`superscopes_nn.remote.hosts`).
"""

from __future__ import annotations

import time
from typing import Callable

from nnsight.intervention.backends.remote import RemoteBackend

from . import hosts
from .errors import RETRY, Failure, NDIFError, classify
from .safe_load import MAX_STATUS_BYTES, load_frame, load_result, refusal, too_big


#: Defaults: seconds between status polls, and seconds without any recorded status (or of failed
#: polls) after which the job is reported lost (never resubmitted).
POLL_INTERVAL = 1.0
LOST_AFTER = 1800.0


class NDIFBackend(RemoteBackend):
    """Blocking from the caller's side, non-blocking on the wire (see the module doc).

    ``poll_interval``: seconds between status polls; ``lost_after``: seconds of failed polls
    before giving up with an :class:`~superscopes_nn.remote.errors.NDIFError` naming the job id
    (never a resubmission); ``sleep``: injectable for tests. ``max_result_bytes``: the largest
    result read (default :data:`~superscopes_nn.remote.safe_load.MAX_RESULT_BYTES`);
    ``allow_insecure_http``: accept a plain-http host (and result URL) other than loopback.
    """

    def __init__(self, model_key: str, host: str | None = None, env: dict | None = None, *,
                 poll_interval: float | None = None, lost_after: float | None = None,
                 sleep: Callable[[float], None] = time.sleep, verbose: bool = False,
                 max_result_bytes: int | None = None, allow_insecure_http: bool = False):
        super().__init__(model_key, host=host, env=env, blocking=False, verbose=verbose)
        self.allow_insecure_http = bool(allow_insecure_http)
        hosts.check_host(self.host, self.allow_insecure_http)
        self.poll_interval = POLL_INTERVAL if poll_interval is None else poll_interval
        self.lost_after = LOST_AFTER if lost_after is None else lost_after
        self.max_result_bytes = max_result_bytes
        self.sleep = sleep
        self.polls = 0

    def __call__(self, tracer=None):
        self.job_id = None
        self.submit(tracer)  # one POST; a failure here means nothing was accepted
        result = self.wait(tracer)
        if isinstance(result, dict):
            self.check_names(result, tracer)
            self._push(result, tracer)
        return result

    # ------------------------------------------------------------------ what a host sends, read as data

    def finalize(self, content: bytes) -> dict:
        """The saved values in a result blob, decoded as data only (never nnsight's ``torch.load``
        with ``weights_only=False``): :func:`~superscopes_nn.remote.safe_load.load_result`."""
        self._log(f"result: {len(content):,} bytes")
        return load_result(content, self.host, compressed=self.compress, limit=self.max_result_bytes)

    def parse(self, message):
        """One websocket frame: JSON, or a binary frame decoded as data only (not ``ResponseModel.unpickle``)."""
        from nnsight.schema.response import ResponseModel

        if isinstance(message, (bytes, bytearray)):
            return ResponseModel(**load_frame(bytes(message), self.host, self.max_result_bytes))
        if len(message) > MAX_STATUS_BYTES:
            raise refusal(self.host, f"a status of {len(message)} characters, over {MAX_STATUS_BYTES}")
        return ResponseModel.model_validate_json(message)

    def download_result(self, url):
        """The result a COMPLETED status carries: inline bytes, or a URL fetched with a size bound (a
        ``Content-Length`` over it is refused before reading; a body is cut off at it), then decoded as data."""
        import httpx
        from nnsight.intervention.backends.remote import _CHUNK_SIZE, _CONNECT_TIMEOUT, _READ_TIMEOUT

        from .safe_load import MAX_RESULT_BYTES

        if isinstance(url, (bytes, bytearray)):
            return self.finalize(bytes(url))
        if not isinstance(url, str) or not url:
            raise refusal(self.host, f"its COMPLETED status carries {type(url).__name__} where the result "
                                     "(a URL or the blob) belongs")
        why = hosts.check_result_url(url, self.host, self.allow_insecure_http)
        if why is not None:
            raise refusal(self.host, why)
        limit = MAX_RESULT_BYTES if self.max_result_bytes is None else int(self.max_result_bytes)
        buffer = bytearray()
        with httpx.Client(timeout=httpx.Timeout(_CONNECT_TIMEOUT, read=_READ_TIMEOUT)) as client:
            with client.stream("GET", url) as response:
                response.raise_for_status()
                announced = response.headers.get("Content-Length", "")
                if announced.isdigit() and int(announced) > limit:  # refused before a byte of it is read
                    raise too_big(self.host, f"its result announces {int(announced)} bytes", limit)
                try:
                    for chunk in response.iter_bytes(chunk_size=_CHUNK_SIZE):
                        buffer += chunk
                        if len(buffer) > limit:
                            raise too_big(self.host, f"its result runs on past {limit} bytes", limit)
                except httpx.RemoteProtocolError as err:  # the body ended before its Content-Length
                    raise refusal(self.host, f"its result ended after {len(buffer)} of {announced or '?'} bytes "
                                             f"(truncated: {err}); fetch it again from GET /response/{self.job_id}"
                                  ) from None
        return self.finalize(bytes(buffer))

    def check_names(self, result: dict, tracer) -> None:
        """Refuse a result naming a value its session's code never mentions (pushing it would bind a
        name in the caller's frame that the session could not have saved)."""
        code = getattr(getattr(tracer, "info", None), "code", None)
        if code is None:
            return
        names = set(code.co_names) | set(code.co_varnames)
        stray = sorted(set(result) - names)
        if stray:
            raise refusal(self.host, f"it returns {', '.join(map(repr, stray[:5]))}, not a name its session uses")

    def _status(self):
        """The job's latest status (``None``: nothing recorded yet), re-polling network failures."""
        import httpx
        from nnsight.intervention.backends.remote import _CONNECT_TIMEOUT, _READ_TIMEOUT
        from nnsight.schema.response import ResponseModel


        started = time.monotonic()
        while True:
            self.polls += 1
            try:
                headers = {"ndif-api-key": self.api_key} if self.api_key else None
                with httpx.Client(timeout=httpx.Timeout(_CONNECT_TIMEOUT, read=_READ_TIMEOUT)) as client:
                    with client.stream("GET", f"{self.host}/response/{self.job_id}", headers=headers) as resp:
                        if resp.status_code == 404:
                            return None  # NDIF: "nothing recorded yet", still running
                        body = bytearray()
                        for chunk in resp.iter_bytes():
                            body += chunk
                            if len(body) > MAX_STATUS_BYTES:
                                raise refusal(self.host, f"its status for job {self.job_id} runs past "
                                                         f"{MAX_STATUS_BYTES} bytes")
                        # a failed poll is classified by its status and body, read here within the bound
                        httpx.Response(resp.status_code, headers=resp.headers, content=bytes(body),
                                       request=resp.request).raise_for_status()
                try:
                    return ResponseModel.model_validate_json(bytes(body))
                except ValueError as err:
                    raise refusal(self.host, f"its status for job {self.job_id} is not a response "
                                             f"({' '.join(str(err).split())[:160]})") from None
            except (httpx.TransportError, httpx.HTTPStatusError) as err:
                failure = classify(err, host=self.host)
                if failure is None or failure.kind != RETRY:
                    raise
                if time.monotonic() - started > self.lost_after:
                    raise NDIFError(Failure("permanent", f"lost contact with NDIF at {self.host} while job "
                                                         f"{self.job_id} was running ({failure.message}); it was "
                                                         "not resubmitted: fetch it later from "
                                                         f"GET /response/{self.job_id}", job_id=self.job_id)) from err
                self.sleep(self.poll_interval)

    def poll(self, tracer=None):
        """nnsight's one poll of a submitted job, through :meth:`_status` (bounded, decoded as data):
        the saved values on COMPLETED, else ``None``."""
        response = self._status()
        if response is None:
            return None
        self.status = response.status
        return self.handle(response)

    def _lost(self, why: str):

        return NDIFError(Failure("permanent", f"lost track of NDIF job {self.job_id} at {self.host} ({why}); it was "
                                              "not resubmitted (NDIFBackend waits on job ids): fetch it later "
                                              f"from GET /response/{self.job_id}", job_id=self.job_id))

    def wait(self, tracer=None):
        from nnsight.schema.response import Status

        started = time.monotonic()
        while True:
            response = self._status()
            if response is None and time.monotonic() - started > self.lost_after:
                raise self._lost(f"no status recorded after {self.lost_after:g} s")
            if response is not None:
                self.status = response.status
                result = self.handle(response)  # raises RemoteError on ERROR; downloads on COMPLETED
                if response.status == Status.COMPLETED:
                    return result
            self.sleep(self.poll_interval)


def remote_backend(model, remote=True, **kwargs) -> NDIFBackend:
    """The :class:`NDIFBackend` nnsight's ``remote=`` would build for ``model`` (a host
    string overrides ``nnsight.CONFIG.API.HOST``, as in nnsight); ``kwargs`` go to
    :class:`NDIFBackend` (``allow_insecure_http=True``, ``max_result_bytes=...``)."""
    from ..core.validate import check_remote

    host = check_remote(remote).host
    return NDIFBackend(model.to_model_key(), host=host, env=model._remoteable_get_env(), **kwargs)
