"""The GPU check of issue 21, in one command; prints (and writes) a JSON summary.

    python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json        # on a lent GPU (~5-8 min)
    python benchmarks/gpu_check.py --cpu-smoke                          # the same code at tiny shape, on CPU

(``scripts/gpu_check.sh`` installs the carried wheels first; see its header.) Checks:

- ``engine_tests``: the device-parametrised engine tests with ``SUPERSCOPES_TEST_DEVICES=cuda``
  (tests/test_patching.py, tests/test_half_precision.py, tests/test_devices.py; not slow);
- ``sweep_bf16``: a Superscopes sweep on a Llama-3-8B-shaped model in bf16 (random weights: the
  GPU machine has no hub and the repo carries no 8B checkpoint), its batched prompt-pass logits
  within ``logit_tolerance`` of a plain-HF hook reference and ``exact=True`` rows equal to it;
- ``cross_model_affine``: 8B shape -> Llama-3.2-1B shape through a CPU float32 ``Affine``
  (the weight a user fits on a laptop), local and ``remote="local"``, exact rows equal to the reference;
- ``split_layout``: one model split across devices by accelerate (GPU: layers 0-1 on cuda:0,
  2-3 and the head on the CPU; smoke: half the layers offloaded to disk), read on one device and
  written on the other, exact rows equal to the reference on the same layout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

# (hidden, layers, intermediate, heads, kv heads, vocab)
SHAPES = {
    "llama3-8b": (4096, 32, 14336, 32, 8, 128256),
    "llama3.2-1b": (2048, 16, 8192, 32, 8, 128256),
    "tiny-a": (64, 4, 128, 4, 2, 384),
    "tiny-b": (32, 4, 64, 4, 2, 384),
}


def llama(shape: str, device, dtype, seed: int):
    """A random-weight Llama of ``shape`` built directly on ``device`` in ``dtype``, wrapped for nnsight."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from superscopes_nn.testing.tiny_models import tiny_tokenizer, wrap

    d, n, inter, heads, kv, vocab = SHAPES[shape]
    config = LlamaConfig(hidden_size=d, num_hidden_layers=n, intermediate_size=inter, num_attention_heads=heads,
                         num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=512, bos_token_id=0,
                         eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return wrap(hf.eval(), tiny_tokenizer())


def reference_rows(model, rows, n_new, target_model=None):
    """Plain-HF hook reference ids of ``rows`` (tests/hf_reference.py)."""
    from superscopes_nn.testing.hook_reference import hf_patch_generate

    src, tgt = model._module, (target_model or model)._module
    return [hf_patch_generate(src, tgt, list(r.source_ids), r.source_position, r.source_layer, r.site,
                              list(r.target_ids), r.target_position, r.target_layer, r.mapping, n_new) for r in rows]


def check_engine_tests(smoke: bool) -> dict:
    env = {**os.environ, "SUPERSCOPES_TEST_DEVICES": "cpu" if smoke else "cuda",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # the smoke run stays tiny (and cannot recurse into tests/test_devices.py, which calls this script)
    args = (["tests/test_patching.py", "-k", "sources_read_once"] if smoke else
            ["-m", "not slow", "tests/test_patching.py", "tests/test_half_precision.py", "tests/test_devices.py"])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=420)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    failed = [l for l in proc.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))]
    return {"ok": proc.returncode == 0, "summary": tail, "failed": failed[:20], "command": " ".join(args)}


def check_sweep_bf16(device, smoke: bool, models: dict) -> dict:
    from superscopes_nn.testing.hook_reference import hf_patch_logits
    from superscopes_nn import ENTITY_PROMPT, Target, logit_tolerance, patched_logits, run_rows, sweep_rows

    t0 = time.perf_counter()
    model = models.setdefault("a", llama("tiny-a" if smoke else "llama3-8b", device, torch.bfloat16, seed=0))
    n = model._module.config.num_hidden_layers
    built = time.perf_counter() - t0
    rows = sweep_rows(model, ["Alexander the Great", "Pink Floyd"], layers=range(0, n, max(1, n // 8)),
                      sites=["mlp_out", "residual"], alphas=[1, 4] if smoke else [1, 2, 4, 8], position=-1,
                      target=Target(ENTITY_PROMPT))
    _sync(device)
    t1 = time.perf_counter()
    df = run_rows(model, rows, max_new_tokens=8)
    _sync(device)
    sweep_s = time.perf_counter() - t1
    some = rows[::max(1, len(rows) // 4)][:4]
    got = patched_logits(model, some)
    worst = 0.0
    for r, g in zip(some, got):
        want = hf_patch_logits(model._module, list(r.source_ids), r.source_position, r.source_layer, r.site,
                               list(r.target_ids), r.target_position, r.target_layer, r.mapping).float()
        worst = max(worst, float((g.float() - want).abs().max()) / logit_tolerance(torch.bfloat16, want))
    exact = run_rows(model, some[:2], max_new_tokens=4, exact=True).token_ids.tolist()
    exact_ok = exact == reference_rows(model, some[:2], 4)
    return {"ok": bool(worst <= 1.0 and exact_ok and df.error.isna().all() and len(df) == len(rows)),
            "model": "random Llama, " + ("tiny" if smoke else "Llama-3-8B shape") + f", {n} layers, bf16",
            "rows": len(df), "build_s": round(built, 2), "sweep_s": round(sweep_s, 2),
            "rows_per_s": round(len(df) / sweep_s, 2), "worst_logit_diff_over_tolerance": round(worst, 4),
            "exact_equals_reference": exact_ok, "gpu_mem_gib": _mem(device)}


def check_cross_model(device, smoke: bool, models: dict) -> dict:
    from superscopes_nn import ENTITY_PROMPT, Affine, Source, Target, patchscope, resolve

    src = models.setdefault("a", llama("tiny-a" if smoke else "llama3-8b", device, torch.bfloat16, seed=0))
    tgt = models.setdefault("b", llama("tiny-b" if smoke else "llama3.2-1b", device, torch.bfloat16, seed=1))
    d_s, d_t = src._module.config.hidden_size, tgt._module.config.hidden_size
    g = torch.Generator().manual_seed(0)
    f = Affine(torch.randn(d_t, d_s, generator=g) / d_s ** 0.5, torch.randn(d_t, generator=g) * 0.01)  # CPU float32
    n = src._module.config.num_hidden_layers
    patches = [(Source(p, l, -1), Target(ENTITY_PROMPT, layer=2), f)
               for p in ("Pink Floyd", "Star Wars") for l in (1, n // 2, n - 1)]
    t0 = time.perf_counter()
    local = patchscope(src, patches, target_model=tgt, max_new_tokens=6)
    _sync(device)
    local_s = time.perf_counter() - t0
    sim = patchscope(src, patches, target_model=tgt, max_new_tokens=6, remote="local")
    exact = patchscope(src, patches[:2], target_model=tgt, max_new_tokens=4, exact=True).token_ids.tolist()
    exact_ok = exact == reference_rows(src, resolve(src, patches[:2], target_model=tgt), 4, target_model=tgt)
    same = local.token_ids.tolist() == sim.token_ids.tolist()
    return {"ok": bool(same and exact_ok and local.error.isna().all() and f.weight.device.type == "cpu"),
            "affine": f"[{d_t}, {d_s}] float32 on cpu", "rows": len(local), "seconds": round(local_s, 2),
            "remote_local_equals_local": same, "exact_equals_reference": exact_ok}


def check_split_layout(device, smoke: bool) -> dict:
    from accelerate import dispatch_model

    from superscopes_nn import ENTITY_PROMPT, Target, run_rows, sweep_rows
    from superscopes_nn.testing.tiny_models import tiny_hf_model, wrap

    hf, tok = tiny_hf_model("llama", seed=3)
    fast, slow = ("cpu", "disk") if smoke else (0, "cpu")
    layout = {"model.embed_tokens": fast, "model.rotary_emb": fast, "model.layers.0": fast, "model.layers.1": fast,
              "model.layers.2": slow, "model.layers.3": slow, "model.norm": slow, "lm_head": slow}
    with tempfile.TemporaryDirectory() as off:
        hf = dispatch_model(hf, device_map=layout, main_device="cpu", offload_dir=off)
        model = wrap(hf, tok)
        rows = sweep_rows(model, ["Pink Floyd", "Titanic"], layers=[0, 1], sites=["residual", "mlp_out"], alphas=[4],
                          target_layers=[3], target=Target(ENTITY_PROMPT))  # read on `fast`, written on `slow`
        batched = run_rows(model, rows, max_new_tokens=5).token_ids.tolist()
        exact = run_rows(model, rows[:3], max_new_tokens=5, exact=True).token_ids.tolist()
        ref = reference_rows(model, rows, 5)
    return {"ok": exact == ref[:3], "layout": {k: str(v) for k, v in layout.items()}, "rows": len(rows),
            "exact_equals_reference": exact == ref[:3],
            "batched_rows_equal_reference": sum(a == b for a, b in zip(batched, ref))}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _mem(device):
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if torch.device(device).type == "cuda" else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (what the test suite runs)")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--skip", action="append", default=[], help="a check to leave out (repeatable)")
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: torch.cuda.is_available() is False; run with --cpu-smoke on a CPU", file=sys.stderr)
        return 2
    device = "cpu" if smoke else "cuda"
    summary = {"device": device, "gpu": torch.cuda.get_device_name(0) if not smoke else None,
               "torch": torch.__version__, "python": platform.python_version(), "checks": {}}
    try:
        import nnsight
        import transformers

        summary.update(nnsight=nnsight.__version__, transformers=transformers.__version__)
    except ImportError as err:  # the GPU image lacks nnsight: scripts/gpu_check.sh installs the carried wheels
        summary.update(ok=False, error=f"{err}; see scripts/gpu_check.sh")
        print(json.dumps(summary, indent=1))
        return 1
    models: dict = {}
    checks = {"engine_tests": lambda: check_engine_tests(smoke),
              "sweep_bf16": lambda: check_sweep_bf16(device, smoke, models),
              "cross_model_affine": lambda: check_cross_model(device, smoke, models),
              "split_layout": lambda: check_split_layout(device, smoke)}
    t_all = time.perf_counter()
    for name, fn in checks.items():
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as err:  # report every check, never stop at the first failure
            res = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        res["wall_s"] = round(time.perf_counter() - t0, 2)
        summary["checks"][name] = res
        print(f"[gpu_check] {name}: {'ok' if res['ok'] else 'FAILED'} ({res['wall_s']} s)", file=sys.stderr, flush=True)
    summary["total_s"] = round(time.perf_counter() - t_all, 2)
    summary["ok"] = all(c["ok"] for c in summary["checks"].values())
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
