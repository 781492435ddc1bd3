"""Issue 19: sites resolved by structure on every family, checked when a model loads."""

import dataclasses
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from superscopes_nn.testing.hook_reference import hf_patch_generate
from superscopes_nn.structure.architectures import ARCHITECTURES, SITES, families_markdown
from superscopes_nn.structure.spec import arch_spec
from superscopes_nn.structure.models import wrap
from superscopes_nn.engine.rows import sweep_rows
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.specs import ENTITY_PROMPT, Target
from superscopes_nn.structure.sites_resolver import SiteError, resolve_sites
from superscopes_nn.structure.spec import verify_sites
from superscopes_nn.testing.tiny_models import FLAT_ARCHS, HYBRID_ARCHS, TINY_ARCHS, tiny_hf_model, tiny_model, tiny_tokenizer

README = Path(__file__).resolve().parents[1] / "README.md"


@functools.lru_cache(maxsize=None)
def _model(arch):
    """One wrapped tiny model per family for the tests that do not change it."""
    return tiny_model(arch)


@pytest.fixture(scope="module", params=TINY_ARCHS)
def family(request):
    return request.param, _model(request.param)


def test_resolver_finds_the_table_entry(family):
    """The spec read off a forward pass equals the recorded one (and so the README table)."""
    arch, model = family
    assert resolve_sites(model._module) == ARCHITECTURES[arch]
    config = type(model._module.config)(**model._module.config.to_dict())
    assert arch_spec(config) == ARCHITECTURES[arch]  # a config alone (never built): the table


# OLMo 2's MLP reads the residual tensor itself (no pre-MLP norm); the engine writes
# ``.input`` in place, so an mlp_in patch there also patches the skip connection.
ALIASED_INPUT: set = set()  # none: input sites are written as a copy (sites.write_patches)


def test_patched_generation_matches_hf_reference(family):
    """Every family, every site: the engine's patched generation equals plain forward hooks."""
    arch, model = family
    _matches_reference(model, [s for s in SITES if (arch, s) not in ALIASED_INPUT])


def test_patched_mlp_in_where_the_mlp_reads_the_residual_itself():
    """OLMo 2's MLP input is the residual tensor itself: an in-place write would patch the skip path too."""
    _matches_reference(_model("olmo2"), ["mlp_in"])


def test_every_table_entry_is_tested():
    # HYBRID_ARCHS: tests/test_hybrid_families.py; FLAT_ARCHS: tests/test_flat_families.py
    assert set(ARCHITECTURES) == set(TINY_ARCHS) | set(HYBRID_ARCHS) | set(FLAT_ARCHS)


def test_multimodal_gemma3_uses_the_language_model():
    hf, _ = tiny_hf_model("gemma3")
    spec = resolve_sites(hf)
    assert spec.layers == "model.language_model.layers" and spec.final_norm == "model.language_model.norm"
    assert len(hf.model.vision_tower.encoder.layers) == 2  # present, never taken for the decoder


# (field, replacement) breaking one thing each; every one must be caught on load.
BROKEN = {
    "attn_out at the MLP": lambda s: dict(attn_out=s.mlp_out),
    "mlp_out at the MLP input norm": lambda s: dict(mlp_out=s.mlp_norm or s.attn),
    "mlp_in at the attention": lambda s: dict(mlp_in=s.attn),
    "parallel flipped": lambda s: dict(parallel=not s.parallel),
    "attention and MLP swapped": lambda s: dict(attn_out=s.mlp_out, mlp_out=s.attn_out),
    "no such module": lambda s: dict(mlp_out="feed_forward"),
}


@pytest.mark.parametrize("arch", ["llama", "gemma2", "olmo2", "gptj", "falcon", "phi3", "qwen3_moe"])
@pytest.mark.parametrize("how", list(BROKEN))
def test_load_check_catches_a_broken_spec(arch, how):
    hf = _model(arch)._module
    spec = resolve_sites(hf)
    assert verify_sites(hf, spec) is spec
    broken = dataclasses.replace(spec, **BROKEN[how](spec))
    if broken == spec:
        pytest.fail(f"{how} does not change the {arch} spec")
    with pytest.raises(SiteError) as err:
        verify_sites(hf, broken)
    assert "\n" not in str(err.value) and arch in str(err.value)


def test_wrap_runs_the_check(monkeypatch):
    """wrap() resolves and checks on one pass; re-wrapping (another dtype) checks again."""
    import superscopes_nn.structure.sites_resolver as R
    import superscopes_nn.structure.spec as S

    calls, passes = [], []
    orig_verify, orig_run = S.verify_sites, R.run_watched
    monkeypatch.setattr(S, "verify_sites", lambda m, s=None, ids=None: calls.append(s) or orig_verify(m, s, ids))
    for mod in (R, S):  # resolve_sites (R) and verify_sites (S) each run the watched pass
        monkeypatch.setattr(mod, "run_watched", lambda *a: passes.append(1) or orig_run(*a))
    hf, tok = tiny_hf_model("mistral")
    model = wrap(hf, tok)
    assert calls == [None] and len(passes) == 1
    assert arch_spec(model._module.config) == ARCHITECTURES["mistral"]
    wrap(hf.to(torch.bfloat16), tok)
    assert len(calls) == 2 and len(passes) == 2


def test_scaled_residual_has_no_attn_or_mlp_out_site():
    """Granite 3 adds 0.22 x what each block outputs: attn_out / mlp_out are refused, never
    read from the unscaled module; residual and mlp_in still match the hook reference."""
    hf, tok = tiny_hf_model("granite")
    hf.model.layers.apply(lambda m: setattr(m, "residual_multiplier", 0.22) if hasattr(m, "residual_multiplier") else None)
    hf.config.residual_multiplier = 0.22
    with pytest.warns(UserWarning, match="attn_out, mlp_out are not available"):
        model = wrap(hf, tok)
    spec = arch_spec(hf.config)
    assert [s for s, _ in spec.missing] == ["attn_out", "mlp_out"] and "0.22 x self_attn" in spec.missing[0][1]
    with pytest.raises(ValueError, match="'mlp_out' is not available on granite.*residual scale"):
        run_rows(model, sweep_rows(model, "Pink Floyd", layers=[1], sites=["mlp_out"], target=Target(ENTITY_PROMPT)))
    _matches_reference(model, ["residual", "mlp_in"])
    with pytest.raises(ValueError, match="granite"):  # a config alone cannot tell
        arch_spec(type(hf.config)(**{**hf.config.to_dict(), "residual_multiplier": 0.22}))


class _Shifted(torch.nn.Module):
    """A decoder layer that adds a learnt bias of its own after the blocks."""

    def __init__(self, inner, d):
        super().__init__()
        self.inner, self.shift = inner, torch.nn.Parameter(torch.randn(d))

    def forward(self, hidden_states, *args, **kwargs):
        return self.inner(hidden_states, *args, **kwargs) + self.shift


def test_unsupported_layout_refuses_the_sites_it_cannot_find():
    hf, tok = tiny_hf_model("llama")
    hf.model.layers = torch.nn.ModuleList(_Shifted(layer, 64) for layer in hf.model.layers)
    with pytest.warns(UserWarning) as rec:
        model = wrap(hf, tok)
    msg = str(rec[0].message)
    assert "\n" not in msg and "attn_out / mlp_out (and so mlp_in) not found" in msg
    for site in ("attn_out", "mlp_in", "mlp_out"):
        with pytest.raises(ValueError, match=f"'{site}' is not available on llama"):
            arch_spec(hf.config).site_module(site)
    _matches_reference(model, ["residual"])


def test_layers_that_differ_resolve_per_layer():
    """A layer unlike the others lacks its sites there only; every call refuses them there with the reason."""
    hf, tok = tiny_hf_model("qwen2")
    hf.model.layers[2] = _Shifted(hf.model.layers[2], 64)
    model = wrap(hf, tok)
    spec = arch_spec(hf.config)
    assert spec.missing == () and [(s, i) for s, i, _ in spec.gaps] == [("attn_out", 2), ("mlp_in", 2), ("mlp_out", 2)]
    assert spec.site_module("mlp_out") == ("mlp", "mlp", "", "mlp") and spec.site_layers("mlp_out", 4) == [0, 1, 3]
    _matches_reference(model, SITES)  # layers 0 and 3
    from superscopes_nn import collect

    for call in (lambda: collect(model, "Pink Floyd", layers=[2], sites=["mlp_out"]),
                 lambda: run_rows(model, sweep_rows(model, "Pink Floyd", layers=[2], sites=["mlp_out"],
                                                    target=Target(ENTITY_PROMPT)))):
        with pytest.raises(ValueError, match="'mlp_out' is not available on layer 2 of qwen2: no two sub-modules"):
            call()


def test_no_decoder_list_is_a_clear_error():
    hf, tok = tiny_hf_model("gpt2")
    hf.transformer.h = torch.nn.ModuleList()
    with pytest.raises(SiteError, match="no decoder-layer list found"):
        wrap(hf, tok)


def _matches_reference(model, sites, n_new=4):
    """alpha 1 at layer 0 (the source's own value into another prompt) and 6 at layer 3."""
    rows = [r for layer, alpha in ((0, 1.0), (3, 6.0))
            for r in sweep_rows(model, "Alexander the Great", layers=[layer], sites=sites, alphas=[alpha],
                                token="Great", target=Target(ENTITY_PROMPT))]
    df = run_rows(model, rows, max_new_tokens=n_new)
    assert len(df) == 2 * len(sites)
    for r, got in zip(rows, df.token_ids):
        want = hf_patch_generate(model._module, model._module, list(r.source_ids), r.source_position, r.source_layer,
                                 r.site, list(r.target_ids), r.target_position, r.target_layer, r.mapping, n_new)
        assert got == want, (r.site, r.source_layer)


def test_readme_table_is_generated():
    text = README.read_text()
    m = re.search(r"<!-- families:begin.*?-->\n(.*?)<!-- families:end -->", text, re.S)
    assert m, "README lacks the generated families table"
    assert m.group(1) == families_markdown(), "regenerate: python -m superscopes_nn.structure.architectures --markdown"
    out = subprocess.run([sys.executable, "-m", "superscopes_nn.structure.architectures", "--markdown"], capture_output=True,
                         text=True, check=True, cwd=README.parent).stdout
    assert out == families_markdown()


def test_tiny_tokenizer_fits_every_family():
    """phi3's default pad id (32000) is past the tiny vocabulary; every config uses ours."""
    tok = tiny_tokenizer()
    for arch in ("phi3", "gemma3"):
        hf, _ = tiny_hf_model(arch, n_layers=1, hidden=32)
        assert hf.get_input_embeddings().num_embeddings == len(tok)
