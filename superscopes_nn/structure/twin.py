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

The widths are found in two steps, both on the meta device (nothing is allocated until the twin's
size is known to be under :data:`TWIN_MAX_PARAMS`): a table of width names seen before (the fast
path), then :mod:`.twin_widths`: the twin is built on meta, every config integer producing one of
its large parameter dimensions is shrunk (keeping its ratio to the widths already shrunk), expert
counts, expert groups and top-k are clamped, widths equal to a hidden size follow it, and identities
the config class checks (Mamba's ``hidden * expand == heads * head_dim``, Dots3's per-layer
``head_dim == nope + rope``) or that decide a derived module (BLT's ``encoder_cross_output_size``)
are re-solved, guided by the class's refusal. A config transformers itself cannot build or run is one
line saying so (:func:`cannot_run`). Every causal-LM family of the installed transformers is checked
(``tests/test_twin_all_families.py``: 178 of 196 twin on 5.24, the rest listed with their reasons).

So any architecture that resolves locally resolves for a config alone, with the same
structural resolver (:func:`~superscopes_nn.structure.sites_resolver.resolve_sites`), and the
name table :data:`~superscopes_nn.structure.architectures.ARCHITECTURES` is only a cache
checked against twins (``tests/test_twin.py``). The twin is also what the ``ndif_server``
tier runs requests captured from the full-size meta model on (``tests/test_ndif_large.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass

import torch

from . import twin_widths as widths
from .architectures import ArchSpec, get_path, num_layers
from .spec import verify_sites

__all__ = ["twin_config", "twin_model", "twin_spec", "config_key", "check_paths", "cannot_run", "TwinPlan", "TwinError",
           "TWIN_MAX_PARAMS"]

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
_HEADS = re.compile(r"attention_heads$|^n_heads?$|(^|_)num_(key_value_)?heads$|kv_heads$")
_KV = re.compile(r"kv|key_value")
_NAMED = set(_SHRINK) | set(_EXPERT_KEYS) | set(_TOPK_KEYS) | set(_KV_KEYS)


def _subs(d: dict):
    """Keys of ``d`` holding a sub-config (a text / vision / attention / FFN config as a dict)."""
    return [k for k, v in d.items() if isinstance(v, dict) and (k in _SUB or "model_type" in v or any(
        n in v for n in _SHRINK))]


def _shrink(d: dict, width: int) -> dict:
    d = dict(d)
    heads = d.get("num_attention_heads", d.get("n_head"))
    for k, fn in _SHRINK.items():
        if k in d and not isinstance(d[k], bool) and (d[k] is None or isinstance(d[k], int)):
            d[k] = fn(d[k], width)
        elif isinstance(d.get(k), list) and all(isinstance(v, int) for v in d[k]):  # one per layer
            d[k] = [fn(v, width) for v in d[k]]
    for k in [k for k in d if k not in _NAMED and _HEADS.search(k)]:  # encoder_attention_heads, swa_num_...
        if isinstance(d[k], int) and not isinstance(d[k], bool) and 4 < d[k] <= 64:
            d[k] = 2 if _KV.search(k) else 4
    for k in dict.fromkeys([k for k in d if _KV.search(k) and _HEADS.search(k)] + list(_KV_KEYS)):
        if isinstance(d.get(k), int) and not isinstance(d[k], bool) and d[k] > 0:  # keep MHA / GQA / MQA
            d[k] = 4 if d[k] == heads else (1 if d[k] == 1 else 2)
    for k in _EXPERT_KEYS:
        if isinstance(d.get(k), int) and d[k] > 1:
            d[k] = min(d[k], EXPERTS)
    for k in _TOPK_KEYS:
        if isinstance(d.get(k), int) and d[k] > 0:
            d[k] = min(d[k], TOP_K)
    if isinstance(d.get("qk_rope_head_dim"), int) and "head_dim" in d:  # MLA: rope runs on the rope part
        d["head_dim"] = d["qk_rope_head_dim"]
    for k in _subs(d):
        d[k] = _shrink(d[k], width // 2 if k in ("vision_config", "audio_config") else width)
    for k in _tables(d):  # per-layer overrides of these widths (Dots3's per_layer_config)
        d[k] = {i: _shrink(v, width) for i, v in d[k].items()}
    return d


def _tables(d: dict):
    """Keys of ``d`` holding a table of sub-configs (``{"02": {"num_attention_heads": 64, ...}, ...}``)."""
    return [k for k, v in d.items() if isinstance(v, dict) and v and k not in _subs(d) and all(
        isinstance(e, dict) for e in v.values()) and any(n in e for e in v.values() for n in _SHRINK)]


def _special_ids(d: dict, vocab: int, seen: dict) -> dict:
    """Token ids past the twin's vocabulary move to distinct ids at its top (same id -> same id)."""
    d = dict(d)

    def move(i):
        if not isinstance(i, int) or isinstance(i, bool) or i < vocab:
            return i
        if i not in seen:
            seen[i] = vocab - 1 - len(seen)
        return seen[i]

    subs = _subs(d)
    for k, v in list(d.items()):
        if k.endswith(("token_id", "token_index", "token_ids")):
            d[k] = [move(i) for i in v] if isinstance(v, list) else move(v)
        elif k in subs:
            d[k] = _special_ids(v, vocab, seen)
    return d


def twin_config(config, width: int = WIDTH, vocab: int = VOCAB):
    """``config`` with every width shrunk and every structural switch kept (same class, same depth)."""
    return _plan(config, width, vocab).config


@dataclass(frozen=True)
class TwinPlan:
    """A twin's config and its parameter count and largest shapes, measured on the meta device."""

    config: object
    params: int
    shapes: list


def _plan(config, width: int, vocab: int) -> TwinPlan:
    """The name table (fast path), then the widths found by shape (:mod:`.twin_widths`), on meta only."""
    orig = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "quantization_config")}
    d = _shrink(orig, width)
    for cfg in [d] + [d[k] for k in _subs(d) if "vocab_size" in d[k]]:
        for k, v in list(cfg.items()):
            if "vocab" in k and isinstance(v, int) and not isinstance(v, bool) and v > vocab:
                cfg[k] = vocab  # vocab_size, vocab_size_per_layer_input...
    d = _special_ids(d, min(vocab, _vocab(d) or vocab), {})
    before, after = widths.int_leaves(orig), widths.int_leaves(d)
    fixed = {p for p, v in after.items() if before.get(p) != v or p[-1] in _NAMED}
    widths.tie_to_hidden(orig, d)
    widths.clamp_topk(d, EXPERTS)
    d, twin = _checked(config, orig, d, fixed)
    n, shapes = widths.meta_params(twin)
    for _ in range(4):  # what is still wide after the name table, found by shape
        found = widths.wide_keys(d, shapes, fixed, 2 * width, skip=(vocab,))
        if not found:
            break
        trial = copy.deepcopy(d)
        now = widths.int_leaves(d)
        for path, new in widths.new_widths(found, before, now, _known(before, now, fixed)).items():
            widths.set_leaf(trial, path, lambda v, n=new, o=before[path]: n if v == o else max(1, v * n // o))
        fixed |= set(found)
        widths.clamp_topk(trial, EXPERTS)
        try:
            trial, candidate = _checked(config, orig, trial, fixed)
            n2, shapes2 = widths.meta_params(candidate)
        except Exception:  # the class's own checks refuse it: keep the last twin that built
            continue
        d, twin, n, shapes = trial, candidate, n2, shapes2
    if _depth(twin) != _depth(config):  # a config without a top-level layer count (BLT's sub-models) keeps theirs
        raise ValueError(f"twin of {config.model_type}: {_depth(twin)} layers, the config has {_depth(config)}")
    return TwinPlan(twin, n, shapes)


def _known(before: dict, now: dict, fixed: set) -> dict:
    """original width -> its twin value so far, over the ``fixed`` paths (a hidden size's value wins, as
    re-solved by a repair: BLT's ``hidden_size_global`` follows the global width it equals)."""
    known: dict = {}
    for p in sorted(fixed, key=lambda p: (p[-1] not in widths.HIDDEN, p)):
        if p in before and p in now and before[p] > max(now[p], widths.SMALL) and "vocab" not in p[-1]:
            known.setdefault(before[p], now[p])
    return known


class TwinError(ValueError):
    """The twin's config, not the model's, is at fault (a width shrunk in a way its class refuses)."""


def _checked(config, orig: dict, d: dict, fixed: set):
    """``(d, config)``: ``d`` as its config class builds it, else ``d`` with the identities of ``orig`` that the
    class checks restored (:func:`.twin_widths.repair`); restored too where the class builds ``d`` but derives a
    width otherwise than on ``orig`` (:func:`.twin_widths.derived`), when some re-solved identity mends it."""
    def accepts(trial):  # built, and no width derived otherwise than on the original (no module added or lost)
        try:
            changed = widths.derived(orig, type(config).from_dict(copy.deepcopy(trial)).to_dict())  # it edits dicts
        except Exception as err:
            return _line(err)
        return f"derived otherwise: {' '.join(p[-1] for p in sorted(changed))}" if changed else ""

    try:
        twin = _from_dict(config, d)
    except TwinError as err:
        fixed_d = widths.repair(orig, d, fixed, accepts, hint=accepts(d))
        if fixed_d is None:
            raise err from None
        return fixed_d, _from_dict(config, fixed_d)
    if not widths.derived(orig, twin.to_dict()):
        return d, twin
    fixed_d = widths.repair(orig, d, fixed, accepts, hint=accepts(d))  # BLT: two widths no longer equal, a projection appears
    return (d, twin) if fixed_d is None else (fixed_d, _from_dict(config, fixed_d))


def _depth(config):
    try:
        return num_layers(config)
    except ValueError:
        return None


def _from_dict(config, d: dict):
    try:
        return type(config).from_dict(copy.deepcopy(d))  # a class may edit the dicts it is given
    except Exception as err:
        raise TwinError(f"twin of {config.model_type}: its config class refuses the shrunk widths "
                         f"({_line(err)})") from None


def _line(err) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:400]


def cannot_run(config, err) -> ValueError | None:
    """A one-line error when ``config`` itself cannot be built (on meta, full size) or names a None where the
    forward needs a number (``err`` said ``NoneType``); None when the fault is not the config's."""
    from transformers import AutoModelForCausalLM

    family = config.model_type
    nones = [k for k, v in config.to_dict().items() if v is None and not k.startswith("_")]
    if "NoneType" in str(err):
        hit = [k for k in nones if widths.TOPK.search(k) and not k.endswith("group") and "topk" in str(err)] or [
            k for k in nones if k in str(err)]
        if hit:
            return ValueError(f"{family}: transformers cannot run this config: {', '.join(hit)} is None "
                              f"({_line(err)})")
    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config)
    except Exception as full:
        named = [k for k in nones if k in str(full) or re.search(r"expert|top_?k|per_tok", k)]
        return ValueError(f"{family}: transformers cannot build this config at full size ({_line(full)})"
                          + (f"; None in the config: {', '.join(named)}" if named else ""))
    return None


def _vocab(d: dict):
    for cfg in (d, d.get("text_config") or {}):
        if isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None


def twin_model(config, seed: int = 0, width: int = WIDTH, vocab: int = VOCAB):
    """The twin of ``config`` as a random-weight float32 ``AutoModelForCausalLM`` in eval mode; its size is
    measured on the meta device first, so an oversized twin is refused before anything is allocated."""
    from transformers import AutoModelForCausalLM

    try:
        plan = _plan(config, width, vocab)
    except TwinError:
        raise
    except Exception as err:
        raise cannot_run(config, err) or err from None
    if plan.params > TWIN_MAX_PARAMS:
        big = ", ".join(f"{k} {s}" for k, s in plan.shapes[:3])
        raise ValueError(f"twin of {config.model_type} would have {plan.params:,} parameters (> {TWIN_MAX_PARAMS:,}, "
                         f"measured on meta): a width was not shrunk ({big})")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(plan.config, dtype=torch.float32)
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
        try:
            _CACHE[key] = verify_sites(twin)  # resolve_sites + every check, on one forward pass
        except (TypeError, RuntimeError, IndexError) as err:  # the forward failed: the config's fault?
            raise cannot_run(config, err) or err from None
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
