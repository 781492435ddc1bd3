"""Issue 40: positions are the prompt's tokens on a model whose layers carry other positions, and "cannot
generate" is the reuse probe's named field.

A model that puts learned slots beside the prompt's tokens (cpmant: ``prompt_length`` slots in front) is
probed at load (structure.positions): ``collect`` returns one row per token, ``position`` indexes the
tokens, reads and writes land there. Held to references that index the tokens on their own: HF's own
``output_hidden_states`` (cpmant drops its slots itself), and plain forward hooks told the slot count by the
model's definition (cpmant's config; the memory model below, built here). The memory model is a tiny Llama
whose forward puts learned vectors in front of and behind the tokens' embeddings on a prompt pass, to hold
the mechanism to a layout no family of transformers has.
"""

import dataclasses
import re
import warnings

import pytest
import torch

from family_oracle import tiny_family
from superscopes_nn import Source, Target, collect, patched_logits, patchscope, sweep
from superscopes_nn.engine.lens import lens_logits
from superscopes_nn.engine.rows import encode, sweep_rows
from superscopes_nn.structure.caches import CACHE_FAILS
from superscopes_nn.structure.info import attach, model_info
from superscopes_nn.structure.models import wrap
from superscopes_nn.testing.hook_reference import hf_patch_generate, hf_patch_logits, hf_read
from superscopes_nn.testing.tiny_models import tiny_hf_model, tiny_model

PROMPT, TARGET = "Alexander the Great", Target("The official currency of x")


def _close(got, want, tol=1e-4):
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, (got.shape, want.shape)
    err = float((got - want).norm() / (want.norm() + 1e-30))
    assert err <= tol, f"relative error {err:.3g}"


def _memory_model(before: int, after: int, seed: int = 0):
    """A tiny Llama whose prompt pass runs ``before`` learned vectors, the tokens, then ``after`` more (its
    head reads the tokens' positions only); a step continuing from its cache runs the new token alone."""
    hf, tok = tiny_hf_model("llama", seed=seed)
    base = hf.model
    g = torch.Generator().manual_seed(seed + 1)
    base.register_parameter("memory", torch.nn.Parameter(torch.randn(before + after, hf.config.hidden_size,
                                                                     generator=g)))
    cut = []

    def pre(mod, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        emb = mod.embed_tokens(kwargs["input_ids"]) if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        first = cache is None or cache.get_seq_length() == 0
        if first:
            mem = mod.memory.to(emb.dtype).unsqueeze(0).expand(len(emb), -1, -1)
            emb = torch.cat([mem[:, :before], emb, mem[:, before:]], 1)
        cut.append(first)
        return args, dict(kwargs, input_ids=None, inputs_embeds=emb, attention_mask=None, position_ids=None)

    def post(mod, args, kwargs, out):
        if cut.pop():
            h = out.last_hidden_state
            out.last_hidden_state = h[:, before:h.shape[1] - after]
        return out

    base.register_forward_pre_hook(pre, with_kwargs=True)
    base.register_forward_hook(post, with_kwargs=True)
    return hf, tok


def _check(model, hf, slots: int):
    """collect, patched_logits, sweep, patchscope and the lens against forward hooks told ``slots``."""
    n = model_info(model).n_layers
    ids = encode(model.tokenizer, PROMPT)
    got = collect(model, PROMPT, layers=[0, n - 1])
    for layer in (0, n - 1):
        assert got[(layer, "residual")].shape[0] == len(ids)
        _close(got[(layer, "residual")], hf_read(hf, ids, layer, "residual")[slots:slots + len(ids)])
    rows = sweep_rows(model, PROMPT, layers=[1], alphas=[1.0, 4.0], target=TARGET)  # position -1: the last token
    for r, lg in zip(rows, patched_logits(model, rows)):
        _close(lg, hf_patch_logits(hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                   list(r.target_ids), r.target_position, r.target_layer, r.mapping, slots))
    df = sweep(model, PROMPT, layers=[1], alphas=[1.0, 4.0], target=TARGET, max_new_tokens=3, progress=False)
    for r, ids_got in zip(rows, df.token_ids):
        assert list(ids_got) == hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, r.source_layer,
                                                  r.site, list(r.target_ids), r.target_position, r.target_layer,
                                                  r.mapping, 3, slots=slots)
    one = [(Source(PROMPT, layer=n - 1, position=0), Target("The official currency of x", layer=0, position=2))]
    r = rows[0]
    want = hf_patch_generate(hf, hf, list(r.source_ids), 0, n - 1, "residual", list(r.target_ids), 2, 0, r.mapping, 3,
                             slots=slots)
    assert list(patchscope(model, one, max_new_tokens=3, progress=False).token_ids[0]) == want
    with torch.no_grad():
        own = hf(torch.tensor([ids]), use_cache=False).logits[0]
    lens = lens_logits(model, PROMPT, [n - 1], position=1)[0]
    _close(lens, own[1])


def test_cpmant_slots_are_found_and_skipped():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, tok = tiny_family("cpmant")
        model = wrap(hf, tok)
    spec, p = model_info(model).spec, hf.config.prompt_length
    assert (spec.slots_before, spec.slots_after, model_info(model).plain["slots"]) == (p, 0, (p, 0))
    assert "positions beside the prompt's tokens" in spec.no_reuse and not spec.cache_fails
    ids = encode(tok, PROMPT)
    with torch.no_grad():  # HF's own hidden states: cpmant cuts its slots off them itself
        own = hf(torch.tensor([ids]), use_cache=False, output_hidden_states=True).hidden_states
    n = model_info(model).n_layers
    got = collect(model, PROMPT, layers=range(n - 1))
    for layer in range(n - 1):  # hidden_states[layer + 1] is layer's output (the last one is normed)
        _close(got[(layer, "residual")], own[layer + 1][0], 1e-6)
    _check(model, hf, p)


@pytest.mark.parametrize("before, after", [(3, 0), (2, 2), (0, 3)])
def test_memory_slots_before_and_after_the_tokens(before, after):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, tok = _memory_model(before, after)
        model = wrap(hf, tok)
    spec = model_info(model).spec
    assert (spec.slots_before, spec.slots_after) == (before, after)
    assert spec.no_reuse.startswith(f"its decoder layers carry {before + after} positions beside")
    _check(model, hf, before)


def test_cannot_generate_is_the_probes_field_not_its_text():
    """run_requests refuses generation on ``cache_fails``; a reason that merely reads like it does not refuse."""
    model = tiny_model("llama")
    spec = model_info(model).spec
    rows = sweep_rows(model, PROMPT, layers=[1], target=TARGET)
    attach(model, dataclasses.replace(spec, no_reuse=f"{CACHE_FAILS} (text only)", cache_fails=False))
    assert len(sweep(model, PROMPT, layers=[1], target=TARGET, max_new_tokens=2, progress=False)) == 1
    attach(model, dataclasses.replace(spec, no_reuse="its cache broke", cache_fails=True))
    with pytest.raises(ValueError, match=re.escape("cannot generate here: its cache broke")):
        sweep(model, PROMPT, layers=[1], target=TARGET, progress=False)
    assert patched_logits(model, rows).shape[0] == 1  # logits run without a cache
    attach(model, spec)


@pytest.mark.parametrize("family", ["blenderbot", "xlstm"])
def test_cache_failure_sets_the_field(family):
    """The reuse probe marks a model whose forward with a cache fails (plain HF fails there too)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf, tok = tiny_family(family)
        info = model_info(wrap(hf, tok))
    assert info.cache_fails and info.spec.cache_fails and info.no_reuse.startswith(CACHE_FAILS)
    ids = torch.tensor([encode(tok, PROMPT)])
    with pytest.raises(Exception):
        with torch.no_grad():
            hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False, pad_token_id=0)
