"""Issue 30 (second round): blocks returning a flattened [batch * seq, d] residual, attention fused
with its norms, transformer blocks that only feed a Mamba block, a re-normalized residual stream.

Each family of ``testing.FLAT_ARCHS`` is a tiny explicit config. The resolved ones (llama4_text: MoE
layers 1, 3 return [B*S, d]; opt: fc1 / fc2 read and return [B*S, d]; dbrx: attention inside
``norm_attn_norm``) are held to the plain-HF hook reference on the default path with several source
prompts read in one batched pass (nnsight serves a flattened tensor whole to every invoke), to
``collect`` bit for bit, and batched rows to the same rows run one at a time; the refused ones say why.
"""

import functools
import warnings

import pytest
import torch

from superscopes_nn import Source, Target, collect, patched_logits, patchscope
from superscopes_nn.core.specs import ENTITY_PROMPT
from superscopes_nn.engine.rows import sweep_rows
from superscopes_nn.engine.run import run_rows
from superscopes_nn.engine.chunks import plan_chunk
from superscopes_nn.structure.architectures import ARCHITECTURES, SITES
from superscopes_nn.structure.info import model_info
from superscopes_nn.structure.models import wrap
from superscopes_nn.structure.odd_layers import shared_children
from superscopes_nn.testing.hook_reference import hf_patch_generate, hf_patch_logits, hf_read
from superscopes_nn.structure.sites_resolver import resolve_sites
from superscopes_nn.testing.tiny_models import FLAT_ARCHS, tiny_hf_model, tiny_model

RESOLVED = ("llama4_text", "opt", "dbrx")
REFUSED = [a for a in FLAT_ARCHS if a not in RESOLVED]
# three source prompts of one token length: one trace, three invokes (nnsight narrows none of a [B*S, d] tensor)
PROMPTS = [("Alexander the Great", "Great"), ("Pink Floyd", "Floyd"), ("Led Zeppelin", "Zeppelin")]  # 7 tokens each


@functools.lru_cache(maxsize=None)
def _model(arch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_model(arch)


def _rows(model, layers=(1, 3)):
    spec, n = model_info(model).spec, model_info(model).n_layers
    return [r for prompt, token in PROMPTS for i, layer in enumerate(layers) for site in SITES
            if layer in spec.site_layers(site, n)
            for r in sweep_rows(model, prompt, layers=[layer], sites=[site], alphas=[1.0 if i == 0 else 4.0],
                                token=token, target=Target(ENTITY_PROMPT))]


@pytest.mark.parametrize("arch", FLAT_ARCHS)
def test_resolver_finds_the_table_entry(arch):
    spec = resolve_sites(_model(arch)._module)
    assert spec == ARCHITECTURES[arch]


def test_flattened_sites_are_recorded_as_plain_data():
    flat = {a: model_info(_model(a)).plain["sites"] for a in ("llama4_text", "opt")}
    assert flat["llama4_text"]["mlp_out"] == {"path": "feed_forward", "is_input": False, "flat": (1, 3)}  # not 0, 2
    assert flat["llama4_text"]["mlp_in"] == {"path": "feed_forward", "is_input": True, "flat": ()}
    assert flat["opt"]["mlp_in"] == {"path": "fc1", "is_input": True, "flat": (0, 1, 2, 3)}
    assert flat["opt"]["mlp_out"]["flat"] == (0, 1, 2, 3)


@pytest.mark.parametrize("arch", RESOLVED)
def test_default_path_matches_hf_reference(arch):
    """Patched generation, default settings (prefix reuse), rows of three source prompts read in one
    batched trace: each row equals plain forward hooks on that row alone."""
    model = _model(arch)
    rows = _rows(model)
    job = plan_chunk(model, rows, shared_prefix=not model_info(model).no_reuse)
    assert max(len(g) for g in job.source_groups) == 3 and job.prefix_len > 0  # several invokes; reuse exercised
    df = run_rows(model, rows, max_new_tokens=3)
    for r, got in zip(rows, df.token_ids):
        want = hf_patch_generate(model._module, model._module, list(r.source_ids), r.source_position, r.source_layer,
                                 r.site, list(r.target_ids), r.target_position, r.target_layer, r.mapping, 3)
        assert got == want, (arch, r.site, r.source_layer, r.source_ids)
    logits = patched_logits(model, rows)
    for r, got in zip(rows, logits):
        want = hf_patch_logits(model._module, list(r.source_ids), r.source_position, r.source_layer, r.site,
                               list(r.target_ids), r.target_position, r.target_layer, r.mapping)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", RESOLVED)
def test_batched_rows_equal_one_at_a_time(arch):
    model = _model(arch)
    rows = _rows(model, layers=(1,))
    batched = run_rows(model, rows, max_new_tokens=3)
    alone = [run_rows(model, [r], max_new_tokens=3).token_ids[0] for r in rows]
    assert list(batched.token_ids) == alone
    torch.testing.assert_close(patched_logits(model, rows), torch.cat([patched_logits(model, [r]) for r in rows]),
                               rtol=1e-4, atol=1e-4)  # batched matmuls sum in another order


@pytest.mark.parametrize("arch", RESOLVED)
def test_collect_matches_hf_reference(arch):
    model = _model(arch)
    got = collect(model, PROMPTS[0][0], layers=[0, 1, 2, 3], sites=SITES[1:])
    ids = model.tokenizer(PROMPTS[0][0])["input_ids"]
    for (layer, site), value in got.items():
        assert value.shape == (len(ids), 64)
        torch.testing.assert_close(value, hf_read(model._module, ids, layer, site), rtol=0, atol=0)


@pytest.mark.parametrize("arch", REFUSED)
def test_refusals_name_the_layout(arch):
    model = _model(arch)
    why = dict(model_info(model).spec.missing)["mlp_out"]
    assert {"zamba": "(shared_transf, linear feed only that block's input, not the residual stream)",
            "zamba2": "(shared_transformer, linear feed only that block's input, not the residual stream)",
            "minimax": "the layer re-normalizes its residual stream: its output is post_attention_layernorm's output + mlp",
            }[arch] in why
    msg = f"site 'mlp_out' is not available on {arch}: {why}"
    for call in (lambda: collect(model, "Pink Floyd", layers=[1], sites=["mlp_out"]),
                 lambda: patchscope(model, [(Source("Pink Floyd", 1, "Floyd", "mlp_out"), Target(ENTITY_PROMPT))])):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == msg
    df = run_rows(model, sweep_rows(model, "Pink Floyd", layers=[1], sites=["residual"], token="Floyd"),
                  max_new_tokens=2)  # the residual stream still works
    assert len(df) == 1


def test_a_block_shared_between_layers_is_named():
    """Zamba 2 checkpoints reuse one transformer block in several hybrid layers: the refusal says so."""
    hf, tok = tiny_hf_model("zamba2")
    layers = hf.model.layers
    layers[3].shared_transformer = layers[1].shared_transformer
    assert shared_children(layers) == {1: {"shared_transformer": [3]}, 3: {"shared_transformer": [1]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        why = dict(model_info(wrap(hf, tok)).spec.missing)["mlp_out"]
    assert "shared_transformer is one block shared with layer 3" in why


@pytest.mark.parametrize("arch", FLAT_ARCHS)
def test_logit_lens_last_layer_is_the_model_logits(arch):
    """Every family, resolved or refusing sites, runs the lens (final norm + head of each layer's output)."""
    from superscopes_nn.engine.lens import lens_logits

    model = _model(arch)
    prompt = PROMPTS[1][0]
    got = lens_logits(model, prompt, range(4), position=-1)
    with torch.no_grad():
        final = model._module(torch.tensor([model.tokenizer(prompt)["input_ids"]])).logits[0, -1]
    assert got.shape == (4, final.shape[-1])
    torch.testing.assert_close(got[-1], final, rtol=1e-4, atol=1e-4)
