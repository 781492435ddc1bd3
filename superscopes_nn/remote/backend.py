"""A RemoteBackend that never runs a job twice: submit once, wait on the same job id.

nnsight's blocking mode holds one ``/subscribe`` websocket; if it drops while the job runs,
NDIF keeps running it and nothing replays it (NDIF's error reference, "The websocket closes
mid-run"), and a blocking job stores nothing to poll. :class:`NDIFBackend` submits in
nnsight's non-blocking mode (``POST /request``, every status stored under the job id) and
polls ``GET /response/{id}`` until COMPLETED, re-polling through network failures, then
pushes the saved values into the caller's frame exactly as the blocking mode does::

    backend = remote_backend(model)                      # or NDIFBackend(model.to_model_key(), ...)
    with model.session(backend=backend): ...
"""

from __future__ import annotations

import time
from typing import Callable

from nnsight.intervention.backends.remote import RemoteBackend

from .errors import RETRY, Failure, NDIFError, classify


#: Defaults: seconds between status polls, and seconds without any recorded status (or of failed
#: polls) after which the job is reported lost (never resubmitted).
POLL_INTERVAL = 1.0
LOST_AFTER = 1800.0


class NDIFBackend(RemoteBackend):
    """Blocking from the caller's side, non-blocking on the wire (see the module doc).

    ``poll_interval``: seconds between status polls; ``lost_after``: seconds of failed polls
    before giving up with an :class:`~superscopes_nn.remote.errors.NDIFError` naming the job id
    (never a resubmission); ``sleep``: injectable for tests.
    """

    def __init__(self, model_key: str, host: str | None = None, env: dict | None = None, *,
                 poll_interval: float | None = None, lost_after: float | None = None,
                 sleep: Callable[[float], None] = time.sleep, verbose: bool = False):
        super().__init__(model_key, host=host, env=env, blocking=False, verbose=verbose)
        self.poll_interval = POLL_INTERVAL if poll_interval is None else poll_interval
        self.lost_after = LOST_AFTER if lost_after is None else lost_after
        self.sleep = sleep
        self.polls = 0

    def __call__(self, tracer=None):
        self.job_id = None
        self.submit(tracer)  # one POST; a failure here means nothing was accepted
        result = self.wait(tracer)
        if isinstance(result, dict):
            self._push(result, tracer)
        return result

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
                    resp = client.get(f"{self.host}/response/{self.job_id}", headers=headers)
                if resp.status_code == 404:
                    return None  # NDIF: "nothing recorded yet", still running
                resp.raise_for_status()
                return ResponseModel.model_validate_json(resp.text)
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
    string overrides ``nnsight.CONFIG.API.HOST``, as in nnsight)."""
    host = remote if isinstance(remote, str) and remote != "local" else None
    return NDIFBackend(model.to_model_key(), host=host, env=model._remoteable_get_env(), **kwargs)
