"""Where tensors go (issue 21).

The rule: a value is moved to the device and dtype of the tensor it is written into, at the
write; mapping parameters move to the vector's device inside the mapping, once per chunk;
index tensors go to the target's device; nothing crosses a device twice per chunk.

A CPU has no second compute device, so this file checks the rule three ways:

- ``StrictDevices`` (a torch function mode) makes any op that mixes devices raise, the way a
  GPU would (stricter: CUDA quietly accepts CPU index tensors), with ``"meta"`` as the other
  device, and records every move; the engine's mapping and write functions run under it;
- a model dispatched by accelerate with part of its layers offloaded to disk (their weights
  are meta tensors that accelerate's hooks load on every forward) runs every entry point and
  must equal the plain single-device model;
- the NDIF shape of a cross-model request (vectors and Affine weights as CPU tensors, target
  model on ``device``) on every test device: on CPU it cannot cross devices, on CUDA it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from superscopes_nn.testing.hook_reference import hf_patch_generate
from superscopes_nn import Affine, Compose, Fn, load_model
from superscopes_nn.engine.api import collect, patched_logits, patchscope, sweep
from superscopes_nn.engine.chunks import apply_map, map_vectors
from superscopes_nn.engine.lens import lens_logits
from superscopes_nn.engine.rows import resolve, sweep_rows
from superscopes_nn.core.specs import ENTITY_PROMPT, IDENTITY_PROMPT, Source, Target
from superscopes_nn.testing.tiny_models import save_tiny_checkpoint, tiny_hf_model, wrap

ROOT = Path(__file__).resolve().parents[1]
MOVES = (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu)


class StrictDevices(TorchFunctionMode):
    """Raise on any torch op whose tensor operands sit on more than one device; record every
    move ``(from, to, shape)`` made with ``Tensor.to`` / ``.cuda`` / ``.cpu``."""

    def __init__(self):
        super().__init__()
        self.moves = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in MOVES:
            devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            if len(devices) > 1:
                raise RuntimeError(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, devices))}")
        out = func(*args, **kwargs)
        if func in MOVES and isinstance(out, torch.Tensor) and out.device != args[0].device:
            self.moves.append((str(args[0].device), str(out.device), tuple(args[0].shape)))
        return out


def test_strict_devices_catches_what_a_gpu_would():
    t = torch.zeros(2, 3, 4, device="meta")
    with StrictDevices(), pytest.raises(RuntimeError, match="mixes devices"):
        t[torch.tensor([0]), torch.tensor([1])] = torch.ones(1, 4, device="meta")  # CPU indices
    with StrictDevices(), pytest.raises(RuntimeError, match="mixes devices"):
        torch.ones(4, device="meta") @ torch.ones(3, 4).T  # a CPU weight (meta alone would allow it)


def test_mapping_parameters_follow_the_vector_once_per_chunk():
    g = torch.Generator().manual_seed(0)
    f = Compose(Affine(torch.randn(3, 4, generator=g), torch.randn(3, generator=g)), 2.0)
    vs = [torch.randn(4).to("meta") for _ in range(5)]  # read on "another device"
    moved: dict = {}
    with StrictDevices() as mode:
        outs = [apply_map(f.plain(), v, moved) for v in vs]
    assert all(o.device.type == "meta" and o.shape == (3,) for o in outs)
    assert sorted(mode.moves) == [("cpu", "meta", (3,)), ("cpu", "meta", (3, 4))]  # weight and bias, once
    with StrictDevices(), pytest.raises(RuntimeError, match="mixes devices"):  # an Fn's closure is its own
        apply_map(Fn(lambda v: f.base.weight @ v).plain(), vs[0])
    with StrictDevices():
        assert apply_map(Fn(lambda v: f.base.weight.to(v.device) @ v).plain(), vs[0]).device.type == "meta"


def test_map_vectors_moves_a_shared_weight_once_per_chunk(monkeypatch):
    """On one device nothing moves at all; a shared weight is never moved once per row."""
    calls = []
    orig = torch.Tensor.to

    def spy(self, *a, **k):
        if self is f.weight or self is f.bias:
            calls.append(self.shape)
        return orig(self, *a, **k)

    f = Affine(torch.randn(3, 4), torch.randn(3))
    monkeypatch.setattr(torch.Tensor, "to", spy)
    vectors = {k: torch.randn(4) for k in range(6)}
    patched, ok = map_vectors(vectors, [(k, f.plain()) for k in vectors], torch.float16)
    assert calls == [] and bool(ok.all()) and len(patched) == 6
    torch.testing.assert_close(patched[2], f(vectors[2]))


def _stub(residual, mlp_in):
    """A model-shaped namespace: ``layers[l]`` with a residual ``output`` and an ``mlp`` whose ``input`` is a site."""
    blocks = [SimpleNamespace(output=None, mlp=SimpleNamespace(input=None)) for _ in range(3)]
    blocks[1].output, blocks[2].mlp.input = residual, mlp_in
    spec = {"layers": "layers", "lm_head": "lm_head", "sites": {"residual": {"path": "", "is_input": False, "flat": ()},
                                                                "mlp_in": {"path": "mlp", "is_input": True, "flat": ()}},
            "slots": (0, 0)}
    return SimpleNamespace(layers=blocks), spec


def test_writes_move_value_and_indices_to_the_target_once():
    from superscopes_nn.structure.sites import write_patches

    model, spec = _stub(torch.zeros(3, 5, 4, dtype=torch.float16, device="meta"),
                        torch.zeros(3, 5, 4, dtype=torch.float16, device="meta"))
    patched = [torch.randn(4) for _ in range(3)]  # float32 on the CPU (as NDIF sends them back)
    writes = [(1, "residual", torch.tensor([0, 2]), torch.tensor([3, 4]), [0, 2]),
              (2, "mlp_in", torch.tensor([1]), torch.tensor([4]), [1])]
    with StrictDevices() as mode:
        write_patches(model, spec, writes, patched, offset=1)
    vectors = [m for m in mode.moves if m[2] == (4,)]
    indices = [m for m in mode.moves if m[2] != (4,)]
    assert vectors == [("cpu", "meta", (4,))] * 3  # each value crosses once
    assert indices == [("cpu", "meta", (2,))] * 2 + [("cpu", "meta", (1,))] * 2
    assert model.layers[2].mlp.input.device.type == "meta"  # an input site gets a written copy, on its device
    # values land in the target's dtype (checked on CPU targets with data)
    model, spec = _stub(torch.zeros(3, 5, 4, dtype=torch.float16), torch.zeros(3, 5, 4, dtype=torch.bfloat16))
    write_patches(model, spec, writes, patched, offset=1)
    res, mlp_in = model.layers[1].output, model.layers[2].mlp.input
    assert torch.equal(res[2, 3], patched[2].half()) and torch.equal(res[0, 2], patched[0].half())
    assert mlp_in.dtype == torch.bfloat16 and torch.equal(mlp_in[1, 3], patched[1].bfloat16())


# -- accelerate-dispatched models (device_map) ------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    hf, tok = save_tiny_checkpoint(d, "llama", seed=3)
    return d, wrap(hf, tok)


OFFLOAD = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
           "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "disk"}


@pytest.mark.cpu_only
def test_disk_offloaded_model_equals_the_single_device_model(checkpoint, tmp_path):
    path, plain = checkpoint
    model = load_model(str(path), device_map=OFFLOAD, offload_folder=str(tmp_path / "offload"))
    hf = model._module
    assert hf.hf_device_map == OFFLOAD
    assert {p.device.type for p in hf.model.layers[1].parameters()} == {"meta"}  # loaded by hooks per forward
    assert {p.device.type for p in hf.lm_head.parameters()} == {"meta"}
    kw = dict(layers=[0, 1, 3], sites=["residual", "mlp_out", "mlp_in"], alphas=[1, 5], token=-1,
              target=Target(ENTITY_PROMPT), max_new_tokens=5, progress=False)
    want = sweep(plain, ["Pink Floyd", "Star Wars"], **kw)
    assert sweep(model, ["Pink Floyd", "Star Wars"], **kw).token_ids.tolist() == want.token_ids.tolist()
    cross = dict(kw, target_layers=[2, 3], target=Target(IDENTITY_PROMPT, placeholder="?"))
    assert (sweep(model, "Pink Floyd", remote="local", **cross).token_ids.tolist()
            == sweep(plain, "Pink Floyd", **cross).token_ids.tolist())
    rows = sweep_rows(model, ["Alexander the Great"], layers=[1, 3], sites=["residual"], alphas=[1, 4],
                      target=Target("The official currency of x is"))
    torch.testing.assert_close(patched_logits(model, rows), patched_logits(plain, rows), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lens_logits(model, "Led Zeppelin", [0, 1, 3]), lens_logits(plain, "Led Zeppelin", [0, 1, 3]))
    got, ref = collect(model, "Titanic", [1, 3], ["mlp_out"]), collect(plain, "Titanic", [1, 3], ["mlp_out"])
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])


@pytest.mark.cpu_only
def test_cross_model_into_an_offloaded_target_with_affine(checkpoint, tmp_path):
    path, plain = checkpoint
    target = load_model(str(path), device_map=OFFLOAD, offload_folder=str(tmp_path / "offload"))
    src = wrap(*tiny_hf_model("qwen2", seed=5, hidden=32))
    f = Affine(torch.randn(64, 32, generator=torch.Generator().manual_seed(1)) * 0.3)
    patches = [(Source("Pink Floyd", l, -1), Target(ENTITY_PROMPT, layer=3), f) for l in (0, 2)]
    got = patchscope(src, patches, target_model=target, max_new_tokens=5)
    want = patchscope(src, patches, target_model=plain, max_new_tokens=5)
    assert got.token_ids.tolist() == want.token_ids.tolist()


@pytest.mark.cpu_only
def test_load_model_passes_device_map_and_dtype(checkpoint, monkeypatch):
    from transformers import AutoModelForCausalLM

    path, plain = checkpoint
    seen = []
    orig = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (seen.append(k), orig(*a, **k))[1])
    model = load_model(str(path), dtype="bfloat16", device_map="auto")  # no GPU here: all of it on the CPU
    assert seen == [{"dtype": torch.bfloat16, "device_map": "auto"}]
    assert {(p.device.type, p.dtype) for p in model._module.parameters()} == {("cpu", torch.bfloat16)}
    with pytest.raises(ValueError, match="not both"):
        load_model(str(path), device="cpu", device_map="auto")


# -- the NDIF shape: CPU vectors and weights, a model elsewhere -------------------------------

def test_cpu_vectors_and_affine_into_a_model_on_device(device, monkeypatch):
    """A cross-model request as NDIF gets it: the source session's vectors come back as CPU
    tensors, the Affine weight is a CPU tensor, the target model sits on ``device``. On CPU
    nothing can cross (no other placement exists without a GPU); on CUDA every write crosses."""
    import superscopes_nn.engine.run as R

    src = wrap(*tiny_hf_model("llama", seed=1))  # CPU: its vectors are CPU tensors
    hf, tok = tiny_hf_model("gpt2", seed=2, hidden=32)
    tgt = wrap(hf.to(device), tok)
    f = Affine(torch.randn(32, 64, generator=torch.Generator().manual_seed(0)) * 0.2, torch.randn(32) * 0.1)
    seen = []
    orig = R.run_chunks

    def spy(model, job, **kw):
        if model is tgt:
            seen.append({str(v.device) for v in (kw.get("vectors") or {}).values()})
        return orig(model, job, **kw)

    monkeypatch.setattr(R, "run_chunks", spy)
    patches = [(Source("Pink Floyd", l, -1), Target(ENTITY_PROMPT, layer=1), f) for l in (0, 3)]
    df = patchscope(src, patches, target_model=tgt, max_new_tokens=5, remote="local")
    assert seen == [{"cpu"}] and f.weight.device.type == "cpu"
    for r, got in zip(resolve(src, patches, target_model=tgt), df.token_ids):
        assert got == hf_patch_generate(src._module, tgt._module, list(r.source_ids), r.source_position,
                                        r.source_layer, r.site, list(r.target_ids), r.target_position,
                                        r.target_layer, f, 5)


# -- the GPU check script ----------------------------------------------------------------------

@pytest.mark.cpu_only
def test_gpu_check_cpu_smoke(tmp_path):
    """scripts/gpu_check.sh at tiny shape on the CPU: every check of the GPU run, same code."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import json

    summary = json.loads(out.read_text())
    assert summary["ok"] is True and summary["device"] == "cpu"
    assert set(summary["checks"]) == {"engine_tests", "sweep_bf16", "cross_model_affine", "split_layout"}
    assert all(c["ok"] for c in summary["checks"].values()), summary
