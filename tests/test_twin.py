"""Sites of a config alone, by structure: the same-depth narrow twin (superscopes_nn.structure.twin).

* every full-size fixture config (tests/fixtures/large_configs): its meta build is the published
  size, the twin has the meta model's module tree layer for layer (same names, same classes), its
  spec resolves and verifies on the twin, and every resolved path exists on the meta model;
* the ARCHITECTURES name table is a cache: each entry equals the twin's spec of that family;
* families the table never had (GLM-4, EXAONE 4, ERNIE 4.5 MoE, Seed-OSS, Apertus, SmolLM3, ...)
  resolve the same way from their transformers defaults;
* the spec is cached per config (one twin build per distinct config).
"""

from pathlib import Path

import pytest
import torch
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM

from superscopes_nn.structure import twin
from superscopes_nn.structure.architectures import ARCHITECTURES, num_layers
from superscopes_nn.testing.tiny_models import TINY_ARCHS, tiny_config, tiny_tokenizer

CONFIGS = Path(__file__).resolve().parent / "fixtures" / "large_configs"
#: published total parameter counts (billions) of each fixture
PUBLISHED = {"Llama-3.1-405B": 405, "DeepSeek-V3": 671, "Qwen3-235B-A22B": 235, "gpt-oss-120b": 117, "Gemma-3-27B": 27,
             "Mixtral-8x22B": 141, "Qwen2.5-72B": 72.7, "Llama-4-Scout-17B-16E": 109, "GLM-4.5": 355, "GLM-4.5-Air": 106,
             "OLMo-3-32B": 32, "Qwen3-Next-80B-A3B": 80, "DeepSeek-V2": 236, "dots.llm1": 142}
SWITCHES = ("layer_types", "first_k_dense_replace", "mlp_only_layers", "decoder_sparse_step", "moe_layer_freq",
            "interleave_moe_layer_step", "no_rope_layers", "sliding_window", "model_type")


def _tree(model):
    return [(name, type(m).__name__) for name, m in model.named_modules()]


def _meta(config):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def test_at_least_twelve_fixtures():
    assert sorted(p.name for p in CONFIGS.iterdir() if (p / "config.json").exists()) == sorted(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_fixture_twin_has_the_servers_module_tree(name):
    config = AutoConfig.from_pretrained(CONFIGS / name)
    meta = _meta(config)
    n = sum(p.numel() for p in meta.parameters()) / 1e9
    assert abs(n - PUBLISHED[name]) < 0.04 * PUBLISHED[name], f"{name}: {n:.1f} B parameters, published {PUBLISHED[name]}"
    small = twin.twin_config(config)
    for cfg, tcfg in ((config, small), (config.get_text_config(), small.get_text_config())):
        for key in SWITCHES:
            assert getattr(tcfg, key, None) == getattr(cfg, key, None), f"{name}: twin changed {key}"
    model = twin.twin_model(config)
    assert num_layers(model.config) == num_layers(config)
    assert _tree(model) == _tree(meta), f"{name}: the twin's module tree differs from the full-size one"
    assert sum(p.numel() for p in model.parameters()) < twin.TWIN_MAX_PARAMS
    spec = twin.twin_spec(config, model)
    twin.check_paths(meta, spec)
    assert spec.layers.endswith("layers") and spec.lm_head == "lm_head"


@pytest.mark.parametrize("arch", [a for a in TINY_ARCHS if a in ARCHITECTURES])
def test_name_table_is_a_cache_of_the_twin(arch):
    config = tiny_config(arch, len(tiny_tokenizer()))
    assert twin.twin_spec(config) == ARCHITECTURES[arch]


@pytest.mark.parametrize("family", ["glm4", "glm4_moe", "olmo3", "exaone4", "ernie4_5_moe", "seed_oss", "apertus",
                                    "smollm3", "cohere2"])  # qwen3_next is in the table now (per-layer sites)
def test_families_outside_the_table_resolve_on_their_twin(family):
    assert family not in ARCHITECTURES
    config = CONFIG_MAPPING[family]()
    spec = twin.twin_spec(config)
    twin.check_paths(_meta(config), spec)
    assert spec.family == family and spec.has_site("residual")


def test_paths_are_checked_against_the_meta_model():
    from dataclasses import replace

    config = AutoConfig.from_pretrained(CONFIGS / "Qwen2.5-72B")
    spec = twin.twin_spec(config)
    meta = _meta(config)
    with pytest.raises(ValueError, match="no module 'feed_forward'"):
        twin.check_paths(meta, replace(spec, mlp_out="feed_forward"))
    meta.model.layers = meta.model.layers[:3]
    with pytest.raises(ValueError, match="has 3 layers, the config says 80"):
        twin.check_paths(meta, spec)


def test_spec_is_cached_per_config(monkeypatch):
    config = CONFIG_MAPPING["smollm3"](num_hidden_layers=5)
    first = twin.twin_spec(config)
    monkeypatch.setattr(twin, "twin_model", lambda *a, **k: pytest.fail("the twin was built again"))
    assert twin.twin_spec(CONFIG_MAPPING["smollm3"](num_hidden_layers=5)) is first  # an equal config: the cache
    other = CONFIG_MAPPING["smollm3"](num_hidden_layers=6)
    assert twin.config_key(other) != twin.config_key(config)
