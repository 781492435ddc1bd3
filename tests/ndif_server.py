"""Client half of the `ndif_server` tier: send the library's real requests to NDIF's own code.

``remote=True`` builds nnsight's ``RemoteBackend(model.to_model_key(), env=...)`` exactly as
against NDIF; only its transport (websocket + POST) is replaced: the serialized request
(``RemoteBackend._serialize``, which also ships this library by value) and its envelope
(``RequestModel.metadata()``) go to ``tests/ndif_runner.py`` in the interpreter that
``scripts/setup_ndif.sh`` builds, which runs them through ndif 0.1.2's trusted and sandbox
paths. The trusted result comes back through the library's data-only decoder
(``superscopes_nn.remote.safe_load.load_result``: decompress, allowlisted globals,
``weights_only`` load) into the caller's frame; the sandbox result must equal it bit for bit.
A failure comes back as NDIF's text in a ``RemoteError``, as the client would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().parent / "ndif_runner.py"


def ndif_python() -> Path | None:
    """The tier's interpreter: $NDIF_PYTHON, else the venv scripts/setup_ndif.sh builds."""
    env = os.environ.get("NDIF_PYTHON")
    for p in ([Path(env)] if env else [ROOT / ".venv-ndif" / "bin" / "python"]):
        if p.exists():
            return p
    return None


def seed_id_cache(model_dir: str | Path) -> None:
    """A local checkpoint has no hub id: tell nnsight's id cache the directory is its own id."""
    from nnsight.modeling import huggingface

    huggingface._ID_CACHE[str(model_dir)] = str(model_dir)


class Server:
    """One long-lived runner process; models and sandbox pools stay warm between requests."""

    def __init__(self, python: Path, workdir: Path):
        self.workdir = workdir
        self.count = 0
        self.log: list[dict] = []  # one entry per request: the runner's reply plus what we checked
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        # The server computes with the tests' thread count (tests/conftest.py): a float32 matmul's
        # reduction order depends on it, and a random twin's near-tied logits flip under another order.
        threads = os.environ.get("SUPERSCOPES_TEST_THREADS", "1")
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen([str(python), "-I", str(RUNNER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=workdir, env=env)
        self.banner = self._until("NDIF-RUNNER-READY")

    def _until(self, marker: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(marker):
                return line.strip()
        raise RuntimeError(f"ndif runner exited (rc {self.proc.wait()}) before {marker!r}; see its stderr above")

    def run(self, metadata: str, blob: bytes, paths=("trusted", "sandbox")) -> tuple[Path, dict]:
        self.count += 1
        d = self.workdir / f"req{self.count:04d}"
        d.mkdir()
        (d / "envelope.json").write_text(metadata)
        (d / "request.bin").write_bytes(blob)
        self.proc.stdin.write(json.dumps({"dir": str(d), "paths": list(paths)}) + "\n")
        self.proc.stdin.flush()
        self._until(f"NDIF-RUNNER-DONE {d}")
        reply = json.loads((d / "reply.json").read_text())
        if "fatal" in reply:
            raise RuntimeError(f"ndif runner could not take request {d}: {reply['fatal']}")
        return d, reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def route(monkeypatch, server: Server, keys: dict | None = None) -> None:
    """Make every ``RemoteBackend`` (``remote=True``) send to ``server`` instead of a host.

    ``keys``: ``{repo_id: repo_id}`` rewrites the envelope's model key on the way (a request captured
    from a full-size meta model runs on the server's copy of its same-depth narrow twin)."""
    from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

    def request(self, request, tracer):
        blob = self._serialize(tracer)
        metadata = request.metadata()
        if keys:
            meta = json.loads(metadata)
            cls, _, spec = meta["model_key"].partition(":")
            spec = json.loads(spec)
            spec["repo_id"] = keys.get(spec["repo_id"], spec["repo_id"])
            meta["model_key"] = f"{cls}:{json.dumps(spec)}"
            metadata = json.dumps(meta)
        d, reply = server.run(metadata, blob)
        from superscopes_nn.remote.safe_load import load_result

        entry = {"dir": str(d), "model_key": self.model_key, "compress": self.compress, "backend": type(self).__name__,
                 **reply}
        server.log.append(entry)
        results = {}
        for name in ("trusted", "sandbox"):
            if (d / f"result-{name}.bin").exists():  # what the client does with a host's bytes: data only
                results[name] = load_result((d / f"result-{name}.bin").read_bytes(), self.host, compressed=self.compress)
        entry["saved"] = sorted(results.get("trusted", {}))
        if "trusted" in results and "sandbox" in results:
            entry["sandbox_equal"] = _equal(results["trusted"], results["sandbox"])
        if "trusted" in reply["errors"]:
            raise RemoteError(reply["errors"]["trusted"])  # what RemoteBackend.note raises on ERROR
        return results["trusted"]

    monkeypatch.setattr(RemoteBackend, "request", request)

    from nnsight.schema.request import RequestModel

    from superscopes_nn.remote.backend import NDIFBackend

    def ndif_call(self, tracer=None):  # the library's NDIFBackend: same envelope, same server
        result = self.request(RequestModel(model_key=self.model_key, compress=self.compress, env=self.env), tracer)
        if isinstance(result, dict):
            self._push(result, tracer)
        return result

    monkeypatch.setattr(NDIFBackend, "__call__", ndif_call)


def start(tmp_path_factory) -> Server:
    """The tier's server, or a loud failure under CI / a printed skip elsewhere."""
    import pytest

    python = ndif_python()
    if python is None:
        msg = ("ndif_server tier: no NDIF interpreter (.venv-ndif); build it with `bash scripts/setup_ndif.sh` "
               "or set NDIF_PYTHON")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        print(msg, file=sys.stderr)
        pytest.skip(msg)
    return Server(python, tmp_path_factory.mktemp("ndif"))
