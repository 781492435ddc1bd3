"""The model is resolved once (issue 26): load / wrap attach a ModelInfo, and no public call resolves again."""

from __future__ import annotations

import sys

import pytest
import torch

from superscopes_nn import Source, Target, collect, logit_lens, patched_logits, patchscope, resolve, sweep
from superscopes_nn.structure import spec as spec_mod
from superscopes_nn.structure.architectures import SITES, num_layers
from superscopes_nn.structure.info import ModelInfo, model_info, rename
from superscopes_nn.structure.models import wrap
from superscopes_nn.testing.tiny_models import tiny_hf_model, tiny_model

RESOLVERS = ("arch_spec", "resolve_sites", "num_layers", "hidden_size", "verify_sites")


@pytest.fixture()
def model():
    return tiny_model("llama", seed=0)


def test_wrap_attaches_the_info(model):
    from superscopes_nn.structure.info import _INFO

    info = _INFO.get(model)  # kept for this very object (identity, checked through a weakref)
    assert isinstance(info, ModelInfo) and model_info(model) is info
    assert _INFO.get(tiny_model("llama", seed=0)) is not info  # another wrapper of equal weights has its own
    assert all(not isinstance(v, ModelInfo) for v in model.__dict__.values())  # nnsight pickles __dict__ remotely
    hf = model._module
    assert info.n_layers == num_layers(hf.config) == len(hf.model.layers)
    assert info.hidden == hf.config.hidden_size
    assert info.spec.layers == "model.layers"
    sites = info.plain["sites"]
    assert (info.plain["layers"], info.plain["lm_head"]) == (info.spec.layers, info.spec.lm_head)
    assert set(sites) == {s for s in SITES if info.spec.has_site(s)}
    assert all(isinstance(e["path"], str) and isinstance(e["is_input"], bool) and e["flat"] == ()
               for e in sites.values())  # wire-ready
    assert info.eos_ids == frozenset({model.tokenizer.eos_token_id}) | frozenset(
        [hf.generation_config.eos_token_id] if isinstance(hf.generation_config.eos_token_id, int)
        else hf.generation_config.eos_token_id or [])


def _forbid_resolution(monkeypatch):
    """Every module-level reference to a resolver raises: a call that resolves again fails."""
    calls = []

    def boom(name):
        def f(*a, **k):
            calls.append(name)
            raise AssertionError(f"{name} called after load: the model was resolved again")
        return f

    for mod_name, mod in list(sys.modules.items()):
        if not mod_name.startswith("superscopes_nn.") or mod_name == "superscopes_nn.structure.info":
            continue
        for name in RESOLVERS:
            if callable(getattr(mod, name, None)):
                monkeypatch.setattr(mod, name, boom(name))
    return calls


def test_no_public_call_resolves_again(model, monkeypatch):
    calls = _forbid_resolution(monkeypatch)
    src = Source("Pink Floyd", layer=1, position=-1, site="mlp_out")
    tgt = Target("The meaning of x", layer=0, site="residual")
    patched_logits(model, resolve(model, [(src, tgt)]))
    patchscope(model, [(src, tgt)], max_new_tokens=2)
    sweep(model, "Pink Floyd", sites=["residual", "mlp_out"], layers=[0, 1], alphas=[1, 2], max_new_tokens=2)
    collect(model, "Pink Floyd", layers=[0, 1], sites=["residual", "mlp_out"])
    logit_lens(model, "Pink Floyd", layers=[0, 1])
    assert calls == []


def test_the_forbidding_fixture_can_fail(monkeypatch):
    """A model wrapped by hand carries no info: its first call resolves, which the fixture catches."""
    from nnsight.modeling.transformers import TransformersModel

    hf, tok = tiny_hf_model("llama", seed=0)
    bare = TransformersModel(hf, tokenizer=tok)
    _forbid_resolution(monkeypatch)
    with pytest.raises(AssertionError, match="resolved again"):
        patched_logits(bare, resolve(bare, [(Source("Pink Floyd", layer=1), Target("The meaning of x", layer=0))]))


def test_hand_wrapped_model_resolves_once_on_first_use(monkeypatch):
    from nnsight.modeling.transformers import TransformersModel

    hf, tok = tiny_hf_model("llama", seed=0)
    bare = TransformersModel(hf, tokenizer=tok)
    tok.pad_token = tok.pad_token or tok.eos_token
    n = []
    real = spec_mod.arch_spec
    monkeypatch.setattr("superscopes_nn.structure.info.arch_spec", lambda m: n.append(1) or real(m))
    for _ in range(3):
        patched_logits(bare, resolve(bare, [(Source("Pink Floyd", layer=1), Target("The meaning of x", layer=0))]))
    assert n == [1]


def test_rename_keeps_the_spec(model):
    before = model_info(model)
    after = rename(model, "tiny+taught")
    assert after.name == "tiny+taught" and after.spec is before.spec and model_info(model) is after
    df = sweep(model, "Pink Floyd", sites=["residual"], layers=[0], alphas=[1], max_new_tokens=1)
    assert set(df.model) == {"tiny+taught"}


def test_results_equal_a_fresh_wrap(model):
    """The attached info changes no number: the same rows as a model wrapped anew from the same weights."""
    hf, tok = tiny_hf_model("llama", seed=0)
    other = wrap(hf, tok)
    rows = [(Source("Pink Floyd", layer=1, site="mlp_out"), Target("The meaning of x", layer=0, site="residual"))]
    assert torch.equal(patched_logits(model, resolve(model, rows)), patched_logits(other, resolve(other, rows)))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_width_is_read_off_the_structure_not_a_config_key(family, monkeypatch):
    """A config whose width key has a name the library never met (here: the config lookup fails) still gives the
    model's width, the one its hidden states have (read by plain-HF output_hidden_states)."""
    from superscopes_nn.structure import info as info_mod

    hf, tok = tiny_hf_model(family, seed=0)
    with torch.no_grad():
        want = hf(torch.tensor([tok("Pink Floyd")["input_ids"]]), output_hidden_states=True).hidden_states[-1].shape[-1]

    def unknown_key(config):
        raise ValueError(f"cannot find the hidden size in config {type(config).__name__}")

    monkeypatch.setattr(info_mod, "hidden_size", unknown_key)
    assert model_info(wrap(hf, tok)).hidden == want


def test_the_logits_width_is_the_lm_heads():
    """A head padded past the config's ``vocab_size`` (as checkpoints pad to a multiple of 64): the plan sizes
    results by the logits the model really gives."""
    from superscopes_nn.engine.plan import vocab_size

    hf, tok = tiny_hf_model("llama", seed=0)
    config_vocab = hf.config.vocab_size
    hf.lm_head = torch.nn.Linear(hf.lm_head.in_features, config_vocab + 64, bias=False)
    with torch.no_grad():
        got = hf(torch.tensor([tok("Pink Floyd")["input_ids"]])).logits.shape[-1]
    assert got == config_vocab + 64 == vocab_size(wrap(hf, tok))
