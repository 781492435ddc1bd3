"""Execute captured nnsight requests through NDIF's own server code (ndif 0.1.2), offline.

Runs in the interpreter ``scripts/setup_ndif.sh`` builds, as ``python -I tests/ndif_runner.py``:
it cannot import ``superscopes_nn`` (blocked below, and not installed there). It is a small
server: each stdin line is a request directory holding ``envelope.json`` (the client's
``RequestModel.metadata()``) and ``request.bin`` (the serialized block exactly as
``RemoteBackend`` would POST it). For each, on both of NDIF's execution paths:

* trusted: ``prepare_traced_block(model, blob, compress, deserialize=BackendRequestModel.deserialize)``
  then ``execute_traced_block(tracer, dtype)`` (``ndif.services.ray.deployments.modeling.nns``);
* sandbox: a fresh runner from ``ndif.services.ray.sandbox.host.Pool`` (``spawn(model_key=key)``:
  a separate process holding only a meta model), driven by ``SandboxDriver(model, dtype).pump``;

the model is built as NDIF's actor builds it: ``HuggingFaceModel.from_model_key(key,
dispatch=True, dtype=..., device=...)`` with the request's ``env`` applied first. The saved
values go back ``torch.save``d with ``cpu_pickle_module()`` (zstd-compressed when the request
was), as ``result-trusted.bin`` / ``result-sandbox.bin``, or the failure text NDIF would send
as ``error-<path>.txt``. ``reply.json`` lists every module the payload references (pickle
``find_class``, cloudpickle ``subimport``, and ``import`` statements run by shipped code) and
those outside NDIF's module allowlist; then the line ``NDIF-RUNNER-DONE <dir>`` is printed.
"""

import builtins
import importlib.abc
import io
import json
import os
import sys
import time
import traceback


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "superscopes_nn":
            raise ModuleNotFoundError(f"No module named {name!r} (the NDIF server does not have it)")
        return None


sys.meta_path.insert(0, _Block())

# The module allowlist NDIF's server enforced (ndif-team/ndif, 2026-02) while deserializing
# and executing a request. "strict" entries match the module exactly, the others also their
# submodules. Deserialization may also name pickle / cloudpickle / copyreg / nnsight modules.
ALLOWED_STRICT = {"builtins", "operator", "_operator"}
ALLOWED = {"torch", "collections", "nnsight.intervention.envoy", "time", "numpy", "sympy", "nnterp", "math",
           "einops", "urllib3", "typing", "pandas", "enum"}
ALLOWED_DESERIALIZE = {"pickle", "_pickle", "cloudpickle", "copyreg", "nnsight"}


def allowed(module: str, deserializing: bool) -> bool:
    if module in ALLOWED_STRICT:
        return True
    roots = ALLOWED | (ALLOWED_DESERIALIZE if deserializing else set())
    return any(module == r or module.startswith(r + ".") for r in roots)


class Recorder:
    """Every module a request references, with how it was referenced."""

    def __init__(self):
        self.refs = {}  # module -> set of "find_class:<name>" / "subimport" / "import"
        self.active = False

    def add(self, module, how):
        if self.active and module:
            self.refs.setdefault(module, set()).add(how)

    def install(self):
        import cloudpickle.cloudpickle as cp
        from nnsight.intervention import serialization

        recorder, subimport = self, cp.subimport

        def recording_subimport(name):
            recorder.add(name, "subimport")
            return subimport(name)

        def find_class(unpickler, module, name):
            recorder.add(module, f"find_class:{name}")
            obj = pickle_find_class(unpickler, module, name)
            return recording_subimport if obj is subimport else obj

        import pickle

        pickle_find_class = pickle.Unpickler.find_class
        for cls in {serialization.CustomCloudUnpickler, *serialization.CustomCloudUnpickler.__subclasses__()}:
            cls.find_class = find_class
        real_import = builtins.__import__

        def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
            if recorder.active and level == 0 and globals is not None and _shipped(globals):
                recorder.add(name, "import")
            return real_import(name, globals, locals, fromlist, level)

        builtins.__import__ = recording_import

    def report(self):
        modules = {m: sorted(h) for m, h in sorted(self.refs.items())}
        bad = {m: h for m, h in modules.items()
               if not allowed(m, deserializing=all(x != "import" for x in h))}
        return modules, bad


def _shipped(glbls) -> bool:
    """Is this code shipped in the request (by value / the traced block), not installed here?"""
    mod = sys.modules.get(glbls.get("__name__", ""))
    return mod is None or getattr(mod, "__dict__", None) is not glbls


RECORDER = Recorder()
MODELS, POOLS = {}, {}


def _model(key, dtype, device):
    from nnsight.modeling.huggingface import HuggingFaceModel

    if key not in MODELS:
        model = HuggingFaceModel.from_model_key(key, dispatch=True, dtype=dtype, device=device)
        model._module.requires_grad_(False)
        MODELS[key] = model
    return MODELS[key]


def _pool(key):
    from ndif.services.ray.sandbox.host import Pool

    if key not in POOLS and len(POOLS) >= int(os.environ.get("NDIF_TIER_MAX_POOLS", "0") or 1 << 30):
        for old in list(POOLS):  # many models one after the other: one warm runner at a time
            _close(POOLS.pop(old))
            MODELS.pop(old, None)
    if key not in POOLS:
        POOLS[key] = Pool(size=1, model_key=key)  # NDIF's own pool: a fresh runner per request
    return POOLS[key]


def _close(pool):
    while pool.spawning:
        time.sleep(0.05)
    pool.close()


def _finish(blob: bytes, compress: bool) -> bytes:
    if compress:  # as the actor's prepare_result: the client decompresses under its own flag
        import zstandard

        blob = zstandard.ZstdCompressor(level=3).compress(blob)
    return blob


def run_trusted(model, blob, compress, dtype):
    import torch
    from ndif.common.schema.request import BackendRequestModel
    from ndif.services.ray.deployments.modeling.nns import block_scope, execute_traced_block, prepare_traced_block
    from ndif.services.ray.deployments.modeling.util import cpu_pickle_module

    RECORDER.active = True
    try:
        with block_scope():
            tracer, _ = prepare_traced_block(model, blob, compress, deserialize=BackendRequestModel.deserialize)
            saved = execute_traced_block(tracer, dtype)
    finally:
        RECORDER.active = False
    buffer = io.BytesIO()
    torch.save(saved, buffer, pickle_module=cpu_pickle_module())
    return buffer.getvalue()


def run_sandbox(model, key, blob, compress, dtype, env):
    from ndif.services.ray.sandbox.driver import SandboxDriver

    sandbox = _pool(key).acquire(timeout=120)
    try:
        connection = sandbox.connection()
        try:
            connection.send((blob, compress, str(dtype), None, env))
            data, _ = SandboxDriver(model, dtype).pump(connection)
            return data
        finally:
            connection.close()
    finally:
        sandbox.stop()


def handle(path: str, paths) -> dict:
    from ndif.services.ray.deployments.modeling.util import resolve_dtype

    meta = json.loads(open(os.path.join(path, "envelope.json")).read())
    blob = open(os.path.join(path, "request.bin"), "rb").read()
    key, compress, env = meta["model_key"], bool(meta.get("compress")), meta.get("env") or {}
    dtype_name = os.environ.get("NDIF_TIER_DTYPE", "float32")
    dtype = resolve_dtype(dtype_name)
    model = _model(key, dtype_name, os.environ.get("NDIF_TIER_DEVICE", "cpu"))
    model._remoteable_set_env(env)  # the actor applies the request's env before either path
    RECORDER.refs.clear()
    reply = {"errors": {}}
    for name in paths:
        try:
            data = run_trusted(model, blob, compress, dtype) if name == "trusted" else \
                run_sandbox(model, key, blob, compress, dtype, env)
            with open(os.path.join(path, f"result-{name}.bin"), "wb") as fh:
                fh.write(_finish(data, compress))
        except Exception as error:  # noqa: BLE001 - NDIF sends the text back as the job's ERROR
            from ndif.common.errors import RequestError

            text = str(error) if isinstance(error, RequestError) else "".join(
                traceback.format_exception(type(error), error, error.__traceback__))
            reply["errors"][name] = text
    reply["modules"], reply["disallowed"] = RECORDER.report()
    with open(os.path.join(path, "reply.json"), "w") as fh:
        json.dump(reply, fh)
    return reply


def main():
    RECORDER.install()
    import ndif

    print(f"NDIF-RUNNER-READY ndif {getattr(ndif, '__version__', '0.1.2')} python {sys.version.split()[0]}",
          flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            handle(job["dir"], job.get("paths", ["trusted", "sandbox"]))
        except Exception:  # noqa: BLE001 - the envelope itself was unusable: report, keep serving
            with open(os.path.join(job["dir"], "reply.json"), "w") as fh:
                json.dump({"fatal": traceback.format_exc()}, fh)
        print(f"NDIF-RUNNER-DONE {job['dir']}", flush=True)
    for pool in POOLS.values():  # let a runner still warming finish, then stop it with the rest
        _close(pool)


if __name__ == "__main__":
    main()
