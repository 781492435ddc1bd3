"""A structural twin: the server's module tree at full depth, narrow enough to run here.

A remote model is built on meta weights (``load_model(id, remote=True)``): it has no forward
pass, so its sites cannot be read off one. Its *twin* can: the same config with every width
shrunk (hidden size, MLP and expert widths, heads, experts, vocabulary) and everything that
decides the module tree kept (``model_type``, the number of layers, and every per-layer
switch: ``layer_types`` sliding / full / chunked / linear attention, ``first_k_dense_replace``,
``mlp_only_layers``, ``decoder_sparse_step``, ``moe_layer_freq``, ``interleave_moe_layer_step``,
``no_rope_layers``...), built with random weights::

    >>> from superscopes_nn.structure.twin import twin_config, twin_model, twin_spec
    >>> cfg = transformers.CONFIG_MAPPING["deepseek_v3"]()     # 671B: 61 layers x 256 experts
    >>> twin_config(cfg).num_hidden_layers, twin_config(cfg).hidden_size
    (61, 64)
    >>> spec = twin_spec(cfg)            # resolve_sites + verify_sites on the twin, cached per config
    >>> check_paths(meta_hf_model, spec) # every resolved path exists on the full-size meta model

So any architecture that resolves locally resolves for a config alone, with the same
structural resolver (:func:`~superscopes_nn.structure.sites_resolver.resolve_sites`), and the
name table :data:`~superscopes_nn.structure.architectures.ARCHITECTURES` is only a cache
checked against twins (``tests/test_twin.py``). The twin is also what the ``ndif_server``
tier runs requests captured from the full-size meta model on (``tests/test_ndif_large.py``).
"""

from __future__ import annotations

import hashlib
import json

import torch

from .architectures import ArchSpec, get_path, num_layers
from .spec import verify_sites

__all__ = ["twin_config", "twin_model", "twin_spec", "config_key", "check_paths", "TWIN_MAX_PARAMS"]

#: A twin larger than this means a width key was not shrunk (the error names the largest tensors).
TWIN_MAX_PARAMS = 40_000_000
WIDTH, VOCAB, EXPERTS, TOP_K = 64, 512, 4, 2

# key -> new value (a function of the old one); applied to the config and every sub-config.
_SHRINK = {
    "hidden_size": lambda v, w: w, "n_embd": lambda v, w: w, "d_model": lambda v, w: w,
    "intermediate_size": lambda v, w: 2 * w, "intermediate_size_mlp": lambda v, w: 2 * w,
    "ffn_hidden_size": lambda v, w: 2 * w, "n_inner": lambda v, w: None if v is None else 2 * w,
    "moe_intermediate_size": lambda v, w: w // 2, "shared_expert_intermediate_size": lambda v, w: w // 2,
    "expert_ffn_hidden_size": lambda v, w: w // 2,
    "num_attention_heads": lambda v, w: 4, "n_head": lambda v, w: 4,
    "head_dim": lambda v, w: None if v is None else w // 4,
    "kv_lora_rank": lambda v, w: 16, "q_lora_rank": lambda v, w: None if v is None else 16,
    "qk_rope_head_dim": lambda v, w: 8, "qk_nope_head_dim": lambda v, w: 8, "qk_head_dim": lambda v, w: 16,
    "v_head_dim": lambda v, w: 16,
    "linear_num_key_heads": lambda v, w: 2, "linear_num_value_heads": lambda v, w: 4,
    "linear_key_head_dim": lambda v, w: 16, "linear_value_head_dim": lambda v, w: 16,
    "n_group": lambda v, w: None if v is None else 1, "topk_group": lambda v, w: None if v is None else 1,
    "n_shared_experts": lambda v, w: None if not v else 1,
    "vision_output_dim": lambda v, w: w, "projector_input_dim": lambda v, w: w, "projector_output_dim": lambda v, w: w,
}
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOPK_KEYS = ("num_experts_per_tok", "moe_k", "num_experts_per_token", "top_k")
_KV_KEYS = ("num_key_value_heads", "n_head_kv", "num_kv_heads", "multi_query_group_num")
_SUB = ("text_config", "vision_config", "audio_config", "language_config")


def _shrink(d: dict, width: int) -> dict:
    d = dict(d)
    heads = d.get("num_attention_heads", d.get("n_head"))
    for k, fn in _SHRINK.items():
        if k in d and not isinstance(d[k], bool) and (d[k] is None or isinstance(d[k], int)):
            d[k] = fn(d[k], width)
    for k in _KV_KEYS:
        if isinstance(d.get(k), int) and d[k] > 0:  # keep MHA / GQA / MQA as they are
            d[k] = 4 if d[k] == heads else (1 if d[k] == 1 else 2)
    for k in _EXPERT_KEYS:
        if isinstance(d.get(k), int) and d[k] > 1:
            d[k] = min(d[k], EXPERTS)
    for k in _TOPK_KEYS:
        if isinstance(d.get(k), int) and d[k] > 0:
            d[k] = min(d[k], TOP_K)
    if isinstance(d.get("qk_rope_head_dim"), int) and "head_dim" in d:  # MLA: rope runs on the rope part
        d["head_dim"] = d["qk_rope_head_dim"]
    for k in _SUB:
        if isinstance(d.get(k), dict):
            d[k] = _shrink(d[k], width // 2 if k != "text_config" and k != "language_config" else width)
    return d


def _special_ids(d: dict, vocab: int, seen: dict) -> dict:
    """Token ids past the twin's vocabulary move to distinct ids at its top (same id -> same id)."""
    d = dict(d)

    def move(i):
        if not isinstance(i, int) or isinstance(i, bool) or i < vocab:
            return i
        if i not in seen:
            seen[i] = vocab - 1 - len(seen)
        return seen[i]

    for k, v in list(d.items()):
        if k.endswith(("token_id", "token_index", "token_ids")):
            d[k] = [move(i) for i in v] if isinstance(v, list) else move(v)
        elif k in _SUB and isinstance(v, dict):
            d[k] = _special_ids(v, vocab, seen)
    return d


def twin_config(config, width: int = WIDTH, vocab: int = VOCAB):
    """``config`` with every width shrunk and every structural switch kept (same class, same depth)."""
    d = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "quantization_config")}
    d = _shrink(d, width)
    for cfg in [d] + [d[k] for k in _SUB if isinstance(d.get(k), dict) and "vocab_size" in d[k]]:
        if isinstance(cfg.get("vocab_size"), int):
            cfg["vocab_size"] = min(cfg["vocab_size"], vocab)
    d = _special_ids(d, min(vocab, _vocab(d) or vocab), {})
    twin = type(config).from_dict(d)
    if num_layers(twin) != num_layers(config):
        raise ValueError(f"twin of {config.model_type}: {num_layers(twin)} layers, the config has {num_layers(config)}")
    return twin


def _vocab(d: dict):
    for cfg in (d, d.get("text_config") or {}):
        if isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None


def twin_model(config, seed: int = 0, width: int = WIDTH, vocab: int = VOCAB):
    """The twin of ``config`` as a random-weight float32 ``AutoModelForCausalLM`` in eval mode."""
    from transformers import AutoModelForCausalLM

    cfg = twin_config(config, width, vocab)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    if n > TWIN_MAX_PARAMS:
        big = sorted(model.named_parameters(), key=lambda kv: -kv[1].numel())[:3]
        raise ValueError(f"twin of {config.model_type} has {n:,} parameters (> {TWIN_MAX_PARAMS:,}): a width key "
                         f"was not shrunk ({', '.join(f'{k} {tuple(p.shape)}' for k, p in big)})")
    with torch.no_grad():  # as testing.tiny_models.tiny_hf_model: sharper, less tied values
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.25)
    return model.eval()


def config_key(config) -> str:
    """A hash of what decides the module tree: the config's dict without names and dtypes."""
    drop = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash", "_attn_implementation")
    d = {k: v for k, v in config.to_dict().items() if k not in drop}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


_CACHE: dict[str, ArchSpec] = {}


def twin_spec(config, twin=None) -> ArchSpec:
    """The :class:`ArchSpec` of ``config``'s architecture, resolved and verified on its twin (cached;
    ``twin``: one already built by :func:`twin_model` from ``config``)."""
    key = config_key(config)
    if key not in _CACHE:
        twin = twin if twin is not None else twin_model(config)
        _CACHE[key] = verify_sites(twin)  # resolve_sites + every check, on one forward pass
    return _CACHE[key]


def check_paths(hf_model, spec: ArchSpec) -> None:
    """Every module path of ``spec`` exists on ``hf_model`` (e.g. the full-size meta model), on every layer."""
    family = getattr(hf_model.config, "model_type", type(hf_model).__name__)
    try:
        get_path(hf_model, spec.final_norm), get_path(hf_model, spec.lm_head)
        layers = get_path(hf_model, spec.layers)
    except AttributeError as err:
        raise ValueError(f"{family}: a path of the twin's spec is not on the model ({err})") from None
    want = num_layers(hf_model.config)
    if len(layers) != want:
        raise ValueError(f"{family}: {spec.layers} has {len(layers)} layers, the config says {want}")
    sites = [s for s in ("attn_out", "mlp_out", "mlp_in", "residual") if spec.has_site(s)]
    for i, layer in enumerate(layers):
        subs = {spec.site_module(s, i) for s in sites if i in spec.site_layers(s, want)}
        subs |= {spec.at(f, i) for f in ("attn", "mlp", "mlp_norm")}  # per layer where layers differ
        for path in sorted(p for p in subs if p):
            try:
                get_path(layer, path)
            except AttributeError:
                raise ValueError(f"{family}: layer {i} of the model has no module {path!r} (the twin's spec "
                                 f"puts a site there)") from None
