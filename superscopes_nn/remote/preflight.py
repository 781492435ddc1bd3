"""Before the first request: is the model served, and do client and server run the same nnsight?

Reads what NDIF publishes, the way nnsight 0.8.1 reads it (``nnsight/ndif.py``): ``GET /status``
(one entry per replica: ``repo_id``, ``revision``, ``application_state``; ``is_model_running``
counts only ``RUNNING``) and ``GET /env`` (the server's ``python_version`` and ``packages``,
which ``nnsight.compare()`` diffs against the client)::

    >>> from superscopes_nn.remote.preflight import preflight
    >>> preflight(model, "https://api.ndif.us")     # None, or NDIFError with one line saying what is wrong

A remote run (``remote=True`` or a host) calls it once per host and model before its plan is sent;
``PREFLIGHT = False`` switches that off (the offline test tiers, which have no ``/status``).
"""

from __future__ import annotations

import json

from .errors import FIX, RETRY, Failure, NDIFError

__all__ = ["PREFLIGHT", "preflight", "served", "versions"]

#: Whether remote runs call :func:`preflight` before their first request.
PREFLIGHT = True
_DONE: set = set()


def _get(host: str, path: str, api_key: str | None = None) -> dict:
    import httpx

    headers = {"ndif-api-key": api_key} if api_key else None
    try:
        resp = httpx.get(f"{host}{path}", timeout=httpx.Timeout(5.0, read=30.0), headers=headers)
        resp.raise_for_status()
        return resp.json()
    except (httpx.HTTPError, ValueError) as err:
        kind = RETRY if isinstance(err, httpx.TransportError) else FIX
        raise NDIFError(Failure(kind, f"NDIF at {host}: cannot read GET {path} ({' '.join(str(err).split())[:200]}); "
                                      "is the host right and NDIF up?")) from err


def _repo(model) -> tuple[str, str]:
    spec = json.loads(model.to_model_key().split(":", 1)[1])
    return spec["repo_id"], spec.get("revision") or "main"


def served(status: dict, repo_id: str, revision: str = "main") -> str | None:
    """``None`` when a replica of ``repo_id`` at ``revision`` is RUNNING in a ``/status`` body, else why not."""
    states = [v.get("application_state") for v in status.get("deployments", {}).values()
              if v.get("repo_id") == repo_id and (v.get("revision") or "main") == revision]
    if "RUNNING" in states:
        return None
    if states:
        return f"{repo_id} is deployed but not running (state {', '.join(sorted(set(map(str, states))))}): retry later"
    running = sorted({v.get("repo_id") for v in status.get("deployments", {}).values()
                      if v.get("application_state") == "RUNNING"} - {None})
    some = ", ".join(running[:5]) + (" ..." if len(running) > 5 else "") if running else "none"
    return f"{repo_id} (revision {revision}) is not served (running: {some}); pick a served model"


def versions(env: dict) -> str | None:
    """``None`` when the server's nnsight (``/env`` body) is the client's, else the mismatch."""
    import nnsight

    server = (env.get("packages") or {}).get("nnsight")
    if server is None:
        return "the server did not report its nnsight version (GET /env has no packages.nnsight)"
    if server != nnsight.__version__:
        return (f"client nnsight {nnsight.__version__} != server nnsight {server}: "
                f"pip install nnsight=={server} (compare all with `from nnsight import ndif; print(ndif.compare())`)")
    return None


def preflight(model, host: str, api_key: str | None = None) -> None:
    """Raise :class:`~superscopes_nn.remote.errors.NDIFError` (one line) unless ``model`` is served at
    ``host`` and the server runs the client's nnsight; nothing is submitted."""
    repo, revision = _repo(model)
    why = served(_get(host, "/status", api_key), repo, revision)
    if why is None:
        why = versions(_get(host, "/env", api_key))
    if why is not None:
        raise NDIFError(Failure(FIX, f"NDIF at {host}: {why}"))


def preflight_once(model, host: str) -> None:
    """:func:`preflight` once per (host, model key) in this process, when :data:`PREFLIGHT` is on."""
    from huggingface_hub.errors import HFValidationError

    if not PREFLIGHT:
        return
    try:
        key = (host, model.to_model_key())
    except HFValidationError:
        return  # no hub id: the run's first call reports it in one line (engine.run._named_model_key)
    if key not in _DONE:
        from nnsight import CONFIG

        preflight(model, host, getattr(CONFIG.API, "APIKEY", None))
        _DONE.add(key)
