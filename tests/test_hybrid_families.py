"""Issue 30: state-space, hybrid and linear-attention families, sites per layer, prefix reuse per cache class.

Every family of ``testing.HYBRID_ARCHS`` (a tiny random ``CONFIG_MAPPING[family]()``) is held to the
plain-HF hook reference on the default path (prefix reuse where the model allows it); a family whose
cache can be reused gives the same tokens and logits with and without reuse; every site a layer lacks
is refused by ``collect``, ``sweep``, ``patchscope`` and ``patched_logits`` with the same reason.
"""

import dataclasses
import functools
import warnings

import pytest
import torch

from superscopes_nn import Source, Target, collect, patched_logits, patchscope, sweep
from superscopes_nn.core.specs import ENTITY_PROMPT
from superscopes_nn.engine.rows import sweep_rows
from superscopes_nn.engine.run import run_rows
from superscopes_nn.engine.chunks import plan_chunk
from superscopes_nn.engine.plan import Batching, batching
from superscopes_nn.core.options import RunOptions
from superscopes_nn.structure.architectures import ARCHITECTURES, SITES
from superscopes_nn.structure.caches import ROW_COPY, row_copy_reason
from superscopes_nn.structure.info import model_info
from superscopes_nn.structure.models import wrap
from superscopes_nn.testing.hook_reference import hf_patch_generate, hf_read
from superscopes_nn.structure.sites_resolver import SiteError, resolve_sites
from superscopes_nn.structure.spec import arch_spec
from superscopes_nn.testing.tiny_models import HYBRID_ARCHS, tiny_hf_model, tiny_model, tiny_tokenizer

PROMPT, TOKEN = "Alexander the Great", "Great"


@functools.lru_cache(maxsize=None)
def _model(arch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sites a layout lacks are warned of on load
        return tiny_model(arch)


@pytest.fixture(scope="module", params=HYBRID_ARCHS)
def family(request):
    return request.param, _model(request.param)


def _rows(model, layers=(0, 3)):
    """Every site each of ``layers`` has (alpha 1 at the first, 6 at the others)."""
    spec, n = model_info(model).spec, model_info(model).n_layers
    return [r for i, layer in enumerate(layers) for site in SITES if layer in spec.site_layers(site, n)
            for r in sweep_rows(model, PROMPT, layers=[layer], sites=[site], alphas=[1.0 if i == 0 else 6.0],
                                token=TOKEN, target=Target(ENTITY_PROMPT))]


def test_resolver_finds_the_table_entry(family):
    """The sites are the table's; the reuse decision is probed at load (it moves with transformers: mamba2's cache
    continues a cut prompt exactly on 5.25, not on 5.24), so it is held to the truth below, not to the table's text."""
    arch, model = family
    spec = resolve_sites(model._module)
    assert (dataclasses.replace(spec, no_reuse="", cache_fails=False)
            == dataclasses.replace(ARCHITECTURES[arch], no_reuse="", cache_fails=False))
    assert model_info(model).no_reuse == spec.no_reuse
    config = type(model._module.config)(**model._module.config.to_dict())
    if spec.per_layer:  # a config alone cannot tell which layer is which kind
        with pytest.raises(ValueError, match=f"{arch} has layers that differ"):
            arch_spec(config)


def test_default_path_matches_hf_reference(family, capsys):
    """Patched generation on the default settings (prefix reuse where allowed) equals plain forward hooks;
    a model that cannot reuse its prefix says so once per run."""
    arch, model = family
    rows = _rows(model)
    assert rows, arch
    df = run_rows(model, rows, max_new_tokens=3)
    for r, got in zip(rows, df.token_ids):
        want = hf_patch_generate(model._module, model._module, list(r.source_ids), r.source_position, r.source_layer,
                                 r.site, list(r.target_ids), r.target_position, r.target_layer, r.mapping, 3)
        assert got == want, (arch, r.site, r.source_layer)
    notices = [line for line in capsys.readouterr().err.splitlines() if "without prefix reuse" in line]
    why = model_info(model).no_reuse
    assert notices == ([f"[superscopes] {model_info(model).name}: running without prefix reuse: {why}"] if why else [])


def test_collect_matches_hf_reference(family):
    arch, model = family
    spec, n = model_info(model).spec, model_info(model).n_layers
    reads = [(layer, s) for layer in (1, 2) for s in SITES if layer in spec.site_layers(s, n)]
    got = collect(model, PROMPT, layers=[1, 2], sites=sorted({s for _, s in reads}))
    ids = model.tokenizer(PROMPT)["input_ids"]
    for layer, site in reads:
        torch.testing.assert_close(got[(layer, site)], hf_read(model._module, ids, layer, site), rtol=0, atol=0)


def _reuse_families():
    return [a for a in HYBRID_ARCHS if not model_info(_model(a)).no_reuse]  # the load-time probe's decision


def _cache(out):
    for name in ("cache", "past_key_values"):
        try:
            if getattr(out, name, None) is not None:
                return getattr(out, name)
        except AttributeError:  # an output with no cache at all
            pass
    return None


def _cut_prompt_error(hf, ids, k, kwarg="past_key_values"):
    """Plain HF, independent of the engine: the relative gap between the last logits of one uncut pass and of the
    prompt cut at ``k`` and continued from that cache passed as ``kwarg`` (the engine's invoke passes
    ``past_key_values``); None when the cut prompt cannot be continued."""
    with torch.no_grad():
        full = hf(ids, use_cache=False).logits[0, -1].double()
        cache = _cache(hf(ids[:, :k], use_cache=True))
        try:
            rest = hf(ids[:, k:], use_cache=True, **{kwarg: cache}).logits[0, -1].double()
        except Exception:  # noqa: BLE001  (the refusal below says the continuation fails)
            return None
    return float((rest - full).norm() / full.norm())


@pytest.mark.parametrize("arch", HYBRID_ARCHS)
def test_the_probed_reuse_decision_is_true(arch):
    """Granted reuse gives the uncut pass's tokens and logits (below); a refusal's stated reason holds, checked here
    with plain HF: the cache cannot say its length, or the cut prompt continues differently, or the step fails."""
    model = _model(arch)
    why, hf = model_info(model).no_reuse, model._module
    ids = torch.tensor([model.tokenizer(PROMPT + " and the rest of the sentence")["input_ids"]])
    k = ids.shape[1] // 2
    if not why:
        err = _cut_prompt_error(hf, ids, k)
        assert err is not None and err <= 1e-3, (arch, err)
        return
    with torch.no_grad():
        cache = _cache(hf(ids[:, :k], use_cache=True))
    if "returns no cache" in why:
        assert cache is None, arch
    elif "does not report how many prompt tokens" in why:
        try:
            n = cache.get_seq_length()
        except Exception:  # noqa: BLE001
            n = None
        assert n != k, (arch, n)
    elif "ignores a cache passed as `past_key_values`" in why:  # mamba2 on transformers 5.25
        err = _cut_prompt_error(hf, ids, k)
        assert err is not None and err > 1e-3 and _cut_prompt_error(hf, ids, k, "cache") <= 1e-3, (arch, err)
    elif "does not give the logits of one uncut pass" in why:
        err = _cut_prompt_error(hf, ids, k)
        assert err is None or err > 1e-3, (arch, err)
    elif "not one whose tensors are copied" in why:
        assert row_copy_reason(cache), arch
    else:
        assert "fails" in why and _cut_prompt_error(hf, ids, k) is None, (arch, why)


@pytest.mark.parametrize("arch", HYBRID_ARCHS)
def test_prefix_reuse_equals_no_reuse(arch):
    """A sweep on the default settings (reuse asked for) gives the token ids of one without reuse, on every family:
    where the probe grants reuse the prefix cache is really copied per row (and the logits agree too); where it
    refuses (mamba2 on transformers 5.25 among them), a run asking for reuse runs without it."""
    model = _model(arch)
    rows = _rows(model, layers=(1, 3))
    a = run_rows(model, rows, max_new_tokens=4)
    b = run_rows(model, rows, max_new_tokens=4, shared_prefix=False)
    assert list(a.token_ids) == list(b.token_ids)
    if model_info(model).no_reuse:
        assert batching(model, RunOptions()) == Batching(RunOptions().max_batch_size, False, 1, model_info(model).no_reuse)
        return
    assert plan_chunk(model, rows, shared_prefix=True).prefix_len > 0  # the reuse is really exercised
    # linear attention sums its chunked recurrence in another order when the prompt is cut: not bit-equal
    torch.testing.assert_close(patched_logits(model, rows), patched_logits(model, rows, shared_prefix=False),
                               rtol=1e-4, atol=1e-4)


def test_every_row_copied_cache_class_is_exercised():
    """The cache layer classes of the reuse families are all copied per row (and cover the state-space kinds)."""
    seen = set()
    for arch in _reuse_families():
        hf = _model(arch)._module
        with torch.no_grad():
            cache = hf(torch.tensor([[1, 2, 3]]), use_cache=True).past_key_values
        assert row_copy_reason(cache) == "", arch
        seen |= {type(layer).__name__ for layer in cache.layers}
    assert {"DynamicLayer", "LinearAttentionLayer", "LinearAttentionAndFullAttentionLayer"} <= seen
    assert seen <= set(ROW_COPY)


@pytest.mark.parametrize("arch, site", [("mamba", "mlp_out"), ("granitemoehybrid", "mlp_in"), ("falcon_h1", "attn_out")])
def test_a_missing_site_is_refused_alike_everywhere(arch, site):
    model = _model(arch)
    why = dict(model_info(model).spec.missing)[site]
    msg = f"site '{site}' is not available on {arch}: {why}"
    calls = [lambda: collect(model, PROMPT, layers=[1], sites=[site]),
             lambda: sweep(model, PROMPT, layers=[1], sites=[site], token=TOKEN, progress=False),
             lambda: patchscope(model, [(Source(PROMPT, 1, TOKEN, site), Target(ENTITY_PROMPT))]),
             lambda: patched_logits(model, sweep_rows(model, PROMPT, layers=[1], sites=[site], token=TOKEN))]
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == msg


def test_stacked_residual_streams_are_refused_with_the_reason():
    """DeepSeek V4's layers pass [k, batch, seq, d] (hyper-connections): refused on load, saying so."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    tok = tiny_tokenizer()
    config = CONFIG_MAPPING["deepseek_v4"](
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
        layer_types=["heavily_compressed_attention", "compressed_sparse_attention"], mlp_layer_types=["moe", "moe"],
        hc_mult=2, o_groups=2, index_n_heads=4, index_head_dim=16, qk_rope_head_dim=8, num_nextn_predict_layers=0,
        q_lora_rank=16, kv_lora_rank=16, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(SiteError, match=r"deepseek_v4: its decoder layers pass a stack of residual streams \[1, 8, 2, 64\]"):
        wrap(hf, tok)


def test_bos_outside_the_vocabulary_does_not_break_the_load_check():
    hf, tok = tiny_hf_model("llama", n_layers=2, hidden=32)
    hf.config.bos_token_id = 10 ** 6
    model = wrap(hf, tok)
    assert model_info(model).spec == dataclasses.replace(ARCHITECTURES["llama"], family="llama")
