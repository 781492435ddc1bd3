"""The nnsight patch engine against an independent plain-HF hook reference, on every test device
(``device`` in conftest.py: CPU, and CUDA when present or ``SUPERSCOPES_TEST_DEVICES=cuda``)."""

import pytest
import torch

from superscopes_nn.testing.hook_reference import hf_patch_generate, hf_patch_logits, hf_read
from superscopes_nn.engine.api import collect, patched_logits, patchscope, sweep
from superscopes_nn.engine.rows import resolve, sweep_rows
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.specs import ENTITY_PROMPT, IDENTITY_PROMPT, Affine, Amplify, Source, Target
from superscopes_nn.testing.tiny_models import CORE_ARCHS, tiny_hf_model, wrap

SITES = ("residual", "attn_out", "mlp_in", "mlp_out")


def tiny_model(arch="llama", *, device, dtype=torch.float32, **kw):
    hf, tok = tiny_hf_model(arch, **kw)
    return wrap(hf.to(device, dtype), tok)


@pytest.fixture(scope="module", params=CORE_ARCHS)  # every family: tests/test_families.py
def model(request, device):
    return tiny_model(request.param, device=device)


def test_patched_generation_matches_hf_hooks(model):
    hf = model._module
    rows = sweep_rows(model, ["Alexander the Great"], layers=[0, 2, 3], sites=SITES, alphas=[1.0, 6.0],
                      token="Great", target=Target(ENTITY_PROMPT))
    df = run_rows(model, rows, max_new_tokens=6)
    assert len(df) == 3 * 4 * 2
    for r, got in zip(rows, df.token_ids):
        want = hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                 list(r.target_ids), r.target_position, r.target_layer, r.mapping, 6)
        assert got == want, (r.site, r.source_layer, r.mapping)


def test_batched_equals_one_at_a_time(model):
    kw = dict(layers=[0, 1, 2, 3], sites=["residual", "mlp_out"], alphas=[1, 3, 9], token=-1,
              target=Target(IDENTITY_PROMPT, placeholder="?"), max_new_tokens=5, progress=False)
    batched = sweep(model, ["Back to the Future", "Pink Floyd"], **kw)
    single = sweep(model, ["Back to the Future", "Pink Floyd"], max_batch_size=1, **kw)
    assert len(batched) == 2 * 4 * 2 * 3
    assert batched.token_ids.tolist() == single.token_ids.tolist()


def test_remote_local_equals_local(model):
    kw = dict(layers=[1, 3], sites=["mlp_out", "mlp_in"], alphas=[1, 4], token=-1, max_new_tokens=4, progress=False)
    local = sweep(model, ["Star Wars"], **kw)
    sim = sweep(model, ["Star Wars"], remote="local", **kw)
    assert local.token_ids.tolist() == sim.token_ids.tolist()


def test_mixed_target_lengths_and_cross_layer(device):
    model = tiny_model("llama", device=device)
    hf = model._module
    patches = [
        (Source("Titanic", 1, -1, "residual"), Target("The official currency of x", layer=0), Amplify(2.0)),
        (Source("Will Smith", 2, "Smith", "mlp_out"), Target(ENTITY_PROMPT, layer=3), None),
        (Source("Titanic", 3, 0, "attn_out"), Target(IDENTITY_PROMPT, placeholder="?", layer=1), 3.0),
    ]
    df = patchscope(model, patches, max_new_tokens=5)
    rows = resolve(model, patches)
    for r, got in zip(rows, df.token_ids):
        want = hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                 list(r.target_ids), r.target_position, r.target_layer, r.mapping, 5)
        assert got == want
    assert df.target_layer.tolist() == [0, 3, 1]
    assert df.mapping.tolist() == ["amplify", "identity", "amplify"]


def test_cross_model_with_affine_map(device):
    src, tgt = tiny_model("llama", seed=1, device=device), tiny_model("gpt2", seed=2, hidden=32, device=device)
    g = torch.Generator().manual_seed(0)
    f = Affine(torch.randn(32, 64, generator=g) * 0.2, torch.randn(32, generator=g) * 0.1)
    patches = [(Source("Pink Floyd", l, -1), Target(ENTITY_PROMPT, layer=1), f) for l in (0, 3)]
    df = patchscope(src, patches, target_model=tgt, max_new_tokens=5)
    rows = resolve(src, patches, target_model=tgt)
    for r, got in zip(rows, df.token_ids):
        want = hf_patch_generate(src._module, tgt._module, list(r.source_ids), r.source_position, r.source_layer,
                                 r.site, list(r.target_ids), r.target_position, r.target_layer, f, 5)
        assert got == want
    with pytest.raises(ValueError, match="hidden sizes differ"):
        patchscope(src, [(Source("Pink Floyd", 0), Target(ENTITY_PROMPT), None)], target_model=tgt)


def test_patched_logits_match_hooks(device):
    """Also where the patched positions differ within one call and are not the last token
    (vocabulary logits are computed only from the earliest patched position on)."""
    model = tiny_model("gemma3_text", device=device)
    rows = sweep_rows(model, ["Alexander the Great"], layers=[1, 2], sites=["mlp_out", "residual"], alphas=[1, 8],
                      target=Target(ENTITY_PROMPT))
    for pos in (2, 4):
        rows += sweep_rows(model, ["Pink Floyd"], layers=[1], sites=["residual"], alphas=[3],
                           target=Target("The official currency of x is", position=pos))
    assert len({len(r.target_ids) for r in rows[-2:]}) == 1 and rows[-1].target_position < len(rows[-1].target_ids) - 1
    got = patched_logits(model, rows)
    for r, g in zip(rows, got):
        want = hf_patch_logits(model._module, list(r.source_ids), r.source_position, r.source_layer, r.site,
                               list(r.target_ids), r.target_position, r.target_layer, r.mapping)
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)


def test_collect_matches_hooks(model):
    values = collect(model, "Led Zeppelin", layers=[0, 3], sites=SITES)
    ids = model.tokenizer("Led Zeppelin")["input_ids"]
    for (layer, site), v in values.items():
        assert v.device == model._module.device
        torch.testing.assert_close(v, hf_read(model._module, ids, layer, site))


@pytest.mark.parametrize("target", [Target(ENTITY_PROMPT), Target(IDENTITY_PROMPT, placeholder="?"),
                                    Target("The official currency of x is", layer=1)])
def test_shared_prefix_equals_plain_batched(model, target):
    kw = dict(layers=[0, 1, 3], sites=["residual", "mlp_out"], alphas=[1, 5], token=-1, target=target,
              max_new_tokens=6, progress=False)
    plain = sweep(model, ["Alexander the Great", "Pink Floyd"], shared_prefix=False, **kw)
    prefix = sweep(model, ["Alexander the Great", "Pink Floyd"], shared_prefix=True, **kw)
    assert plain.token_ids.tolist() == prefix.token_ids.tolist()
    local = sweep(model, ["Pink Floyd"], shared_prefix=True, remote="local", **kw)
    assert local.token_ids.tolist() == plain.token_ids.tolist()[len(local):]


def test_patched_logits_with_shared_prefix_equal_full_pass(model):
    """Logits with the target prefix's KV cache reused (and the logits window) equal a full pass."""
    rows = sweep_rows(model, ["Alexander the Great", "Pink Floyd"], layers=[0, 2], sites=["residual", "mlp_out"],
                      alphas=[1, 5], target=Target(IDENTITY_PROMPT, placeholder="?"))
    rows += sweep_rows(model, ["Pink Floyd"], layers=[1], alphas=[2], target=Target("The official currency of x is"))
    full = patched_logits(model, rows, shared_prefix=False)
    reused = patched_logits(model, rows, max_batch_size=3)
    torch.testing.assert_close(reused, full, rtol=1e-4, atol=1e-4)
    assert torch.equal(reused.argmax(-1), full.argmax(-1))
    local = patched_logits(model, rows[:4], remote="local")
    torch.testing.assert_close(local, reused[:4], rtol=1e-4, atol=1e-4)


def test_sources_read_once_per_sweep(monkeypatch, device):
    """Chunks reuse source vectors read by earlier chunks."""
    import superscopes_nn.engine.chunks as P

    model = tiny_model("llama", device=device)
    calls = []
    orig = P.read_sources
    monkeypatch.setattr(P, "read_sources", lambda m, spec, reads, vectors, *a: (calls.append(len(reads)), orig(m, spec, reads, vectors, *a)))
    df = sweep(model, "Pink Floyd", layers=[0, 1, 2, 3], sites=["residual"], alphas=[1, 2, 3, 4], max_batch_size=4,
               max_new_tokens=2, progress=False)
    assert len(df) == 16 and sum(calls) == 4


def test_non_finite_rows_are_reported_not_written(device):
    """fp16: an amplified vector past 65504, or finite vectors that overflow inside the model."""
    model = tiny_model("gpt2", device=device, dtype=torch.float16)
    with pytest.warns(UserWarning, match="non-finite"):
        df = sweep(model, "Pink Floyd", layers=[1], sites=["residual"], alphas=[1.0, 1e6], max_new_tokens=3,
                   progress=False)
    assert df.error.fillna("").tolist() == ["", "non-finite values after amplification (in torch.float16)"]
    assert df.interpretation.isna().tolist() == [False, True] and df.token_ids.iloc[1] == []
    v = collect(model, "Pink Floyd", layers=[1], sites=["mlp_in"])[(1, "mlp_in")][-1].float()
    alpha = 60000.0 / v.abs().max().item()  # finite in fp16; the MLP's first linear overflows
    with pytest.warns(UserWarning, match="non-finite logits"):
        df = sweep(model, "Pink Floyd", layers=[1], sites=["mlp_in"], alphas=[alpha], max_new_tokens=3,
                   progress=False)
    assert df.error.fillna("").tolist() == ["non-finite logits after patching"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_patches_in_model_dtype(dtype, device):
    model = tiny_model("llama", seed=4, device=device, dtype=dtype)
    hf = model._module
    rows = sweep_rows(model, "Alexander the Great", layers=[0, 2], sites=["mlp_out", "residual"], alphas=[1, 4],
                      target=Target(ENTITY_PROMPT))
    # exact=True: one row at a time, as the reference runs (batched half precision is not bit-stable on
    # CPUs with bf16/fp16 matrix units; that path has its tolerance test in test_half_precision.py)
    df = run_rows(model, rows, max_new_tokens=4, exact=True)
    for r, got in zip(rows, df.token_ids):
        want = hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                 list(r.target_ids), r.target_position, r.target_layer, r.mapping, 4)
        assert got == want


def test_several_chunks_per_request_equal_one_per_session(monkeypatch, device):
    """Remote runs send several chunks as one session (one NDIF request); same ids, fewer sessions."""
    import superscopes_nn.engine.run as R

    model = tiny_model("llama", device=device)
    kw = dict(layers=[0, 1, 2, 3], sites=["residual", "mlp_out"], alphas=[1, 3], max_batch_size=4, max_new_tokens=3,
              progress=False)
    local = sweep(model, ["Pink Floyd", "Star Wars"], **kw)  # 32 rows: 8 chunks, 8 sessions
    sessions = []
    real = R.run_chunks
    monkeypatch.setattr(R, "run_chunks", lambda m, jobs, **k: (sessions.append(len(jobs)), real(m, jobs, **k))[1])
    grouped = sweep(model, ["Pink Floyd", "Star Wars"], remote="local", chunks_per_request=3, **kw)
    assert grouped.token_ids.tolist() == local.token_ids.tolist()
    assert sessions == [3, 3, 2]
    sessions.clear()
    logits = patched_logits(model, resolve(model, [(Source("Pink Floyd", l), Target(), a) for l in range(4)
                                                   for a in (1, 2)]), max_batch_size=2, remote="local")
    assert sessions == [4]
    want = patched_logits(model, resolve(model, [(Source("Pink Floyd", l), Target(), a) for l in range(4)
                                                 for a in (1, 2)]), max_batch_size=2)
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
