"""Half precision's stated guarantee (see superscopes_nn.engine.chunks's docstring), tested as stated.

- batched bf16/fp16 prompt-pass logits lie within ``logit_tolerance`` of the one-at-a-time
  plain-HF reference;
- batched generated ids equal the reference's up to the first step where the reference's
  top-1/top-2 margin falls below that tolerance (the rule, never a loosened ``==``);
- ``exact=True`` equals the one-at-a-time reference bit for bit.

The tiny-model tests run on every test device (``device`` in conftest.py: CPU, and CUDA when
present), where the tolerance holds for cuBLAS's batch-shape-dependent bf16/fp16 kernels as well.
The CPU ones run again in a subprocess under ``ONEDNN_MAX_CPU_ISA=AVX2``, so both kernel
families (oneDNN's AVX-512/AMX bf16 kernels and torch's fallback) are exercised on any CPU.
The real Gemma 3 270M in bf16 is batch-shape dependent even on AVX-512 CPUs without AMX
(measured: max |batched - single| 0.43 on logits of scale 26), so its tests always exercise the rule.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from superscopes_nn.testing.hook_reference import assert_ids_agree_until_ambiguous, first_ambiguous_step, hf_patch_generate_logits, hf_patch_logits
from superscopes_nn import ENTITY_PROMPT, Target, logit_tolerance, patched_logits, run_rows, sweep_rows
from superscopes_nn.testing.tiny_models import tiny_hf_model, wrap

HALF = [torch.bfloat16, torch.float16]
HERE = Path(__file__).resolve().parent


def _rows(model, layers):
    rows = sweep_rows(model, ["Alexander the Great", "Pink Floyd"], layers=layers, sites=["mlp_out", "residual"],
                      alphas=[1, 4], target=Target(ENTITY_PROMPT))
    rows += sweep_rows(model, ["Star Wars"], layers=layers[:1], sites=["residual"], alphas=[2],
                       target=Target("The official currency of x is"))
    return rows


def _reference(hf, r, new_tokens):
    return hf_patch_generate_logits(hf, hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                    list(r.target_ids), r.target_position, r.target_layer, r.mapping, new_tokens)


def check_guarantee(model, rows, new_tokens=4):
    """Assert the stated guarantee for ``rows``; returns (max |logit diff| / tolerance, steps checked per row)."""
    hf, dtype = model._module, model._module.dtype
    tol = lambda logits: logit_tolerance(dtype, logits)  # noqa: E731
    got_logits = patched_logits(model, rows)
    df = run_rows(model, rows, max_new_tokens=new_tokens)
    worst, checked = 0.0, []
    for r, g, got_ids in zip(rows, got_logits, df.token_ids):
        want = hf_patch_logits(hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                               list(r.target_ids), r.target_position, r.target_layer, r.mapping).float()
        diff = float((g.float() - want).abs().max())
        assert diff <= tol(want), f"prompt-pass logits off by {diff} > tolerance {tol(want)}"
        worst = max(worst, diff / tol(want))
        ref_ids, steps = _reference(hf, r, new_tokens)
        k = assert_ids_agree_until_ambiguous(list(got_ids), ref_ids, steps, tol)
        checked.append(min(k, len(ref_ids) + 1))
    return worst, checked


def _tiny(dtype, device):
    hf, tok = tiny_hf_model("llama", seed=4)
    return wrap(hf.to(device, dtype), tok)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_batched_within_stated_tolerance(dtype, device):
    model = _tiny(dtype, device)
    check_guarantee(model, _rows(model, [0, 2]))


@pytest.mark.parametrize("dtype", HALF)
def test_exact_mode_equals_one_at_a_time_bit_for_bit(dtype, device):
    model = _tiny(dtype, device)
    hf = model._module
    rows = _rows(model, [0, 2])
    df = run_rows(model, rows, max_new_tokens=4, exact=True)
    logits = patched_logits(model, rows, exact=True)
    for r, got, g in zip(rows, df.token_ids, logits):
        ref_ids, _ = _reference(hf, r, 4)
        assert list(got) == ref_ids
        want = hf_patch_logits(hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                               list(r.target_ids), r.target_position, r.target_layer, r.mapping)
        assert torch.equal(g, want)


def test_tolerance_is_zero_in_float32_and_scales_with_eps():
    logits = torch.tensor([1.0, -26.0, 3.0])
    assert logit_tolerance(torch.float32, logits) == 0.0
    assert logit_tolerance(torch.bfloat16, logits) == pytest.approx(8 * 2 ** -7 * 26)
    assert logit_tolerance(torch.float16, logits) == pytest.approx(8 * 2 ** -10 * 26)


def test_the_rule_catches_a_confident_mismatch_and_allows_an_ambiguous_one():
    tol = lambda logits: 0.5  # noqa: E731
    steps = torch.tensor([[5.0, 1.0, 0.0], [2.0, 1.9, 0.0], [9.0, 0.0, 0.0]])  # step 1 is ambiguous
    assert first_ambiguous_step(steps, tol) == 1
    assert_ids_agree_until_ambiguous([0, 1, 2], [0, 0, 0], steps, tol)  # differs only from step 1 on
    with pytest.raises(AssertionError, match="before the first ambiguous step 1"):
        assert_ids_agree_until_ambiguous([2, 0, 0], [0, 0, 0], steps, tol)
    with pytest.raises(AssertionError):  # an EOS the reference chose confidently must be chosen too
        assert_ids_agree_until_ambiguous([], [0], torch.tensor([[5.0, 1.0]]), tol)


@pytest.fixture(scope="module")
def gemma_bf16():
    from superscopes_nn import load_model

    return load_model("gemma-3-270m", dtype=torch.bfloat16)


@pytest.mark.slow
def test_gemma_bf16_batched_within_stated_tolerance(gemma_bf16):
    rows = _rows(gemma_bf16, [1, 5])
    worst, checked = check_guarantee(gemma_bf16, rows)
    print(f"gemma bf16: worst |diff|/tolerance {worst:.3f}, generated steps checked per row {checked}")


@pytest.mark.slow
def test_gemma_bf16_exact_mode_equals_one_at_a_time(gemma_bf16):
    rows = _rows(gemma_bf16, [3])
    df = run_rows(gemma_bf16, rows, max_new_tokens=3, exact=True)
    for r, got in zip(rows, df.token_ids):
        assert list(got) == _reference(gemma_bf16._module, r, 3)[0]


def _kernel(env: dict) -> str:
    probe = ("import torch; a=torch.randn(64,64,dtype=torch.bfloat16); a@a")
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "ONEDNN_VERBOSE": "1"}, capture_output=True,
                         text=True, timeout=120).stdout
    kernels = [l.split(",")[6] for l in out.splitlines() if ",exec,cpu,matmul," in l]
    return kernels[0] if kernels else "torch fallback (no oneDNN matmul)"


@pytest.mark.cpu_only
@pytest.mark.skipif(os.environ.get("ONEDNN_MAX_CPU_ISA") == "AVX2", reason="already the restricted run")
def test_half_precision_under_restricted_isa():
    """The tests above again with oneDNN held to AVX2: the other bf16 kernel family."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "SUPERSCOPES_TEST_DEVICES": "cpu"}  # oneDNN is CPU-only
    restricted, default = _kernel(env), _kernel(dict(os.environ))
    assert "avx512" not in restricted and "amx" not in restricted, restricted
    print(f"bf16 matmul kernels: default {default!r}, restricted {restricted!r}")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                           "-k", "not restricted_isa and not gemma"], env=env, cwd=HERE.parent,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
