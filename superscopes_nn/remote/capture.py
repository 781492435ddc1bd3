"""Running on NDIF, and proving offline that a request would run there.

Every public entry point takes ``remote=False | "local" | True`` (or an nnsight
``backend=``). ``remote=True`` sends each chunk's session to NDIF as one request
(set your key once: ``python -c "from nnsight import CONFIG; CONFIG.set_default_api_key('KEY')"``
or ``export NDIF_API_KEY=KEY``; the host is ``nnsight.CONFIG.API.HOST``, or pass
``remote="https://host"``). ``remote="local"`` runs nnsight's serialization round
trip here, with this library's source hidden, as the server would see it.

:class:`CaptureBackend` goes one step further: it serializes the request exactly
as :class:`nnsight.intervention.backends.remote.RemoteBackend` would and writes
the bytes to a file instead of sending them, so the request can be replayed in a
fresh interpreter that cannot import ``superscopes_nn`` (``tests/replay_request.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nnsight
from nnsight.intervention.backends.remote import RemoteBackend


def register() -> None:
    """Ship this library's code by value with every remote request (NDIF lacks it)."""
    # The top package is imported before any of its modules, so it is in sys.modules (no upward import).
    nnsight.register(sys.modules[__name__.split(".")[0]])


def ship(remote, backend) -> None:
    """:func:`register` when a session leaves this process (``remote`` set, or a custom ``backend``)."""
    if remote or backend is not None:
        register()


class RequestCaptured(Exception):
    """Raised by :class:`CaptureBackend` after writing the request; ``.path`` is the file."""

    def __init__(self, path: Path):
        super().__init__(f"request captured to {path}")
        self.path = path


class CaptureBackend(RemoteBackend):
    """A RemoteBackend that writes the serialized request to ``path`` instead of sending it."""

    def __init__(self, path: str | Path, model_key: str = "captured:model"):
        super().__init__(model_key, host="http://127.0.0.1:9")
        self.path = Path(path)

    def __call__(self, tracer=None):
        register()
        blob = self._serialize(tracer)
        self.path.write_bytes(blob)
        raise RequestCaptured(self.path)
