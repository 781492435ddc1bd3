"""Issue 40: no silent wrong numbers on any family transformers ships.

Every family of ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` is built as a tiny random model
(tests/family_oracle.py) and, on its default settings (prefix reuse where the load-time probe grants
it, batching), held to plain-HF forward hooks (superscopes_nn.testing.hook_reference) in one combined
check: the layer count is the decoder list's and an index past it is refused before any run; ``collect``
returns one row per prompt token equal to the hooked hidden state; a ``sweep`` (batched, shared prefix)
and a ``patchscope`` generate the hooked greedy ids; ``patched_logits`` equal the hooked logits; the
logit lens at the last layer gives the model's own logits. A family the package refuses is listed in
:data:`REFUSED` with its reason (asserted); one the tiny builder cannot make, in :data:`UNBUILT`.
"""

import re
import warnings

import pytest
import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from family_oracle import tiny_family
from superscopes_nn import Source, Target, collect, patched_logits, patchscope, sweep
from superscopes_nn.engine.lens import lens_logits
from superscopes_nn.engine.rows import encode, sweep_rows
from superscopes_nn.structure.architectures import get_path
from superscopes_nn.structure.info import model_info
from superscopes_nn.structure.models import wrap
from superscopes_nn.testing.hook_reference import hf_patch_generate, hf_patch_logits, hf_read

FAMILIES = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
PROMPT, TARGET = "Alexander the Great", Target("The official currency of x")
_NO_NORM = "no final norm found between the last decoder layer and the LM head: "
_HEAD_ITSELF = _NO_NORM + "the LM head reads the last decoder layer's output itself"
_TRANSFORM = _NO_NORM + "the LM head reads neither"
_NO_LIST = "no decoder-layer list found"
#: family -> a substring of the one-line reason the package refuses it with (checked: it raises exactly that).
REFUSED = {}
#: family -> why its default config does not shrink to a tiny model here (checked: the build fails so).
UNBUILT = {}


def _ref_logits_close(got, want):
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_equals_hooks_or_refuses(family):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if family in UNBUILT:
            with pytest.raises(Exception, match=re.escape(UNBUILT[family])):
                tiny_family(family)
            return
        hf, tok = tiny_family(family)
        if family in REFUSED:
            with pytest.raises(ValueError, match=re.escape(REFUSED[family])):
                wrap(hf, tok)
            return
        model = wrap(hf, tok)
        _check(model, hf)


def _check(model, hf):
    info = model_info(model)
    n, spec = info.n_layers, info.spec
    assert n == len(get_path(hf, spec.layers))
    with pytest.raises(ValueError, match="out of range"):
        collect(model, PROMPT, layers=[n])
    ids = encode(model.tokenizer, PROMPT)
    got = collect(model, PROMPT, layers=[0, n - 1])
    for layer in (0, n - 1):
        assert got[(layer, "residual")].shape[0] == len(ids)
        torch.testing.assert_close(got[(layer, "residual")], hf_read(hf, ids, layer, "residual"))
    sites = ["residual"] + [s for s in ("mlp_out",) if 1 in spec.site_layers(s, n)]
    rows = sweep_rows(model, PROMPT, layers=[1], sites=sites, alphas=[1.0, 4.0], target=TARGET)
    df = sweep(model, PROMPT, layers=[1], sites=sites, alphas=[1.0, 4.0], target=TARGET, max_new_tokens=3,
               progress=False)
    logits = patched_logits(model, rows)
    for r, ids_got, lg in zip(rows, df.token_ids, logits):
        args = (list(r.source_ids), r.source_position, r.source_layer, r.site)
        want = hf_patch_generate(hf, hf, *args, list(r.target_ids), r.target_position, r.target_layer, r.mapping, 3)
        assert list(ids_got) == want, (r.site, r.mapping_key if hasattr(r, "mapping_key") else r.mapping)
        _ref_logits_close(lg, hf_patch_logits(hf, *args, list(r.target_ids), r.target_position, r.target_layer,
                                              r.mapping))
    one = patchscope(model, [(Source(PROMPT, layer=n - 1), Target("The official currency of x", layer=0))],
                     max_new_tokens=3, progress=False)
    r = rows[0]
    want = hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, n - 1, "residual", list(r.target_ids),
                             r.target_position, 0, r.mapping, 3)
    assert list(one.token_ids[0]) == want
    with torch.no_grad():
        own = hf(torch.tensor([ids])).logits[0, -1]
    _ref_logits_close(lens_logits(model, PROMPT, [n - 1])[0], own)
