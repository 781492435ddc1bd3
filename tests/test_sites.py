"""Issue 10: a site is what a block adds to the residual stream, on every architecture."""

import pytest
import torch

from superscopes_nn.structure.architectures import get_path, num_layers
from superscopes_nn.structure.spec import arch_spec
from superscopes_nn.engine.api import collect, patched_logits
from superscopes_nn.engine.rows import resolve
from superscopes_nn.core.specs import Source, Target
from superscopes_nn.testing.tiny_models import TINY_ARCHS, tiny_model

# The pre-MLP norm of each family, written down independently of ArchSpec (None: OLMo 2 has none).
PRE_MLP_NORM = {
    **dict.fromkeys(["llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "phi3", "gemma", "starcoder2",
                     "granite", "gpt_oss", "gpt_neox"], "post_attention_layernorm"),
    **dict.fromkeys(["gemma2", "gemma3_text", "gemma3"], "pre_feedforward_layernorm"),
    "olmo2": None, "gpt2": "ln_2", "gptj": "ln_1", "falcon": "input_layernorm", "cohere": "input_layernorm",
}
PARALLEL = {"gpt_neox", "gptj", "falcon", "cohere"}
PROMPT = "Alexander the Great was a king"


@pytest.fixture(scope="module", params=TINY_ARCHS)
def arch_model(request):
    return request.param, tiny_model(request.param)


def test_oracle_covers_every_family():
    assert set(PRE_MLP_NORM) == set(TINY_ARCHS)


def test_sites_are_residual_contributions(arch_model):
    arch, model = arch_model
    n = num_layers(model._module.config)
    v = collect(model, PROMPT, layers=range(n), sites=("residual", "attn_out", "mlp_in", "mlp_out"))
    emb = collect_embeddings(model)
    spec = arch_spec(model._module.config)
    for layer in range(n):
        resid_in = emb if layer == 0 else v[(layer - 1, "residual")]
        resid_out = v[(layer, "residual")]
        # (1) what the two blocks add is exactly the residual update
        torch.testing.assert_close(resid_out - resid_in, v[(layer, "attn_out")] + v[(layer, "mlp_out")],
                                   rtol=1e-4, atol=1e-4)
        # attn_out checked on its own: the MLP input is the pre-MLP norm of the mid residual
        block = get_path(model._module, spec.layers)[layer]
        norm = getattr(block, PRE_MLP_NORM[arch]) if PRE_MLP_NORM[arch] else (lambda t: t)
        mid = resid_in if arch in PARALLEL else resid_in + v[(layer, "attn_out")]
        with torch.no_grad():
            torch.testing.assert_close(norm(mid), v[(layer, "mlp_in")], rtol=1e-4, atol=1e-4)


def collect_embeddings(model):
    """Input of layer 0 via a plain hook (the residual stream before any block)."""
    spec = arch_spec(model._module.config)
    store = {}
    layer0 = get_path(model._module, spec.layers)[0]
    h = layer0.register_forward_pre_hook(lambda m, args, kwargs: store.__setitem__("x", (args[0] if args else kwargs["hidden_states"]).detach().clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            model._module(torch.tensor([model.tokenizer(PROMPT)["input_ids"]]))
    finally:
        h.remove()
    return store["x"][0]


AMPLIFIED = [(site, layer) for site in ("mlp_out", "attn_out") for layer in (0, 2)]
OWN = ("residual", "attn_out", "mlp_in", "mlp_out")
OWN_PROMPT = "The official currency of x"


@pytest.fixture(scope="module")
def site_logits(arch_model):
    """One patched-logits call per family: alpha 1 and 8 on each AMPLIFIED (site, layer), then
    each OWN site's own value written back at layer 1."""
    _, model = arch_model
    patches = [(Source("Pink Floyd", layer, -1, site), Target(OWN_PROMPT), a) for site, layer in AMPLIFIED
               for a in (1.0, 8.0)]
    patches += [(Source(OWN_PROMPT, 1, -1, site), Target(OWN_PROMPT), 1.0) for site in OWN]
    return patched_logits(model, resolve(model, patches))


def test_amplification_changes_logits(site_logits):
    # (2) alpha 1 vs 8 on the block's contribution gives different logits at the patched position
    for i, key in enumerate(AMPLIFIED):
        assert (site_logits[2 * i] - site_logits[2 * i + 1]).abs().max() > 1e-3, key


def test_identity_patch_of_own_value_is_a_no_op(arch_model, site_logits):
    # (3) alpha 1 with the site's own value leaves the logits unchanged
    _, model = arch_model
    with torch.no_grad():
        clean = model._module(torch.tensor([model.tokenizer(OWN_PROMPT)["input_ids"]])).logits[0, -1]
    for site, got in zip(OWN, site_logits[2 * len(AMPLIFIED):]):
        torch.testing.assert_close(got, clean, rtol=1e-5, atol=1e-5, msg=lambda m: f"{site}: {m}")
