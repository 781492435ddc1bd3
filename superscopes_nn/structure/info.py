"""What every call needs to know about a model, resolved once and carried by the model.

>>> from superscopes_nn.structure.info import model_info
>>> info = model_info(model)          # attached by load_model / wrap; built once otherwise
>>> info.n_layers, info.name, info.spec.layers, info.plain

:func:`~superscopes_nn.structure.models.wrap` (and the meta build for ``remote=True``) resolve
the model's :class:`~superscopes_nn.structure.architectures.ArchSpec` once and attach a
:class:`ModelInfo` to the nnsight wrapper; the engine, the lens and the science read it from
there and never resolve again. The spec stays the one source of truth for module paths:
:attr:`ModelInfo.plain` is derived from it (the wire-ready copy that travels to NDIF).

A wrapper built by hand (``TransformersModel(hf, tokenizer=tok)``) gets its info on first use.
:func:`rename` changes the name results carry (a fine-tuned copy); nothing else changes after
the attach.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core.identity import ByIdentity
from .architectures import SITES, ArchSpec, get_path, hidden_size, num_layers
from .spec import arch_spec

__all__ = ["ModelInfo", "model_info", "attach", "rename", "model_name", "eos_ids", "plain_spec", "context_length"]

_INFO = ByIdentity()
"""model -> its ModelInfo. Not in the wrapper's ``__dict__``: nnsight pickles
that dict into every remote request, and the info must not travel (its spec travels as ``plain``)."""


@dataclass(frozen=True)
class ModelInfo:
    """A model's structure spec and what calls read from its config and tokenizer, once."""

    spec: ArchSpec
    plain: dict
    """``{"layers": path, "lm_head": path, "sites": {site: {"path": module_path, "is_input": bool, "flat":
    layers}}}``: builtins only, wire-ready (a dataclass does not cross to NDIF); where layers differ,
    ``module_path`` is a tuple of per-layer paths (``""`` on a layer without the site); ``flat``: the layers
    on which the site is flattened to ``[batch * seq, d]`` (:attr:`ArchSpec.flat`; ``()`` for none)."""
    name: str
    n_layers: int
    hidden: int
    eos_ids: frozenset
    context: int | None
    no_reuse: str = ""
    """Why a cached prompt prefix is not reused on this model (``""``: it is); see :mod:`.caches`."""
    cache_fails: bool = False
    """A forward pass with a cache fails on this model, so it cannot generate (:attr:`ArchSpec.cache_fails`)."""


def _plain(spec: ArchSpec) -> dict:
    sites = {s: {"path": spec.site_module(s), "is_input": spec.site_is_input(s),
                 "flat": tuple(sorted(i for site, i in spec.flat if site == s))} for s in SITES if spec.has_site(s)}
    return {"layers": spec.layers, "lm_head": spec.lm_head, "sites": sites,
            "slots": (int(spec.slots_before), int(spec.slots_after))}


def _name(model) -> str:
    config = model._module.config
    return getattr(config, "_superscopes_name", None) or getattr(config, "_name_or_path", "") or type(model._module).__name__


def _eos(model) -> frozenset:
    eos = getattr(getattr(model._module, "generation_config", None), "eos_token_id", None)
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    tok = getattr(model, "tokenizer", None)
    if tok is not None and tok.eos_token_id is not None:
        eos.append(tok.eos_token_id)
    return frozenset(int(e) for e in eos)


def _context(config) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(config, name, None) or getattr(getattr(config, "text_config", None), name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def attach(model, spec: ArchSpec | None = None) -> ModelInfo:
    """Resolve ``model`` once (``spec``: already resolved) and attach its :class:`ModelInfo`."""
    config = model._module.config
    spec = spec if spec is not None else arch_spec(model._module)
    info = ModelInfo(spec=spec, plain=_plain(spec), name=_name(model), n_layers=layer_count(model._module, spec),
                     hidden=residual_width(model._module, spec), eos_ids=_eos(model), context=_context(config),
                     no_reuse=spec.no_reuse, cache_fails=spec.cache_fails)
    _INFO.put(model, info)
    return info


def residual_width(hf_model, spec: ArchSpec) -> int:
    """The width of the residual stream, read off the model's structure: the final norm's weight (it reads the last
    decoder layer's output), else the LM head's input, else the input embedding's; a config's width key only where
    none of those tells (transformers' families name that key in several ways, and new ones in others)."""
    import torch

    for path, attr in ((spec.final_norm, "weight"), (spec.lm_head, "in_features")):
        try:
            v = getattr(get_path(hf_model, path), attr, None)
        except (AttributeError, TypeError):
            continue
        if isinstance(v, torch.Tensor) and v.dim() == 1:
            return int(v.shape[0])
        if isinstance(v, int) and v > 0:
            return v
    emb = hf_model.get_input_embeddings() if hasattr(hf_model, "get_input_embeddings") else None
    if isinstance(getattr(emb, "embedding_dim", None), int):
        return emb.embedding_dim
    return hidden_size(hf_model.config)


def logits_width(hf_model, spec: ArchSpec) -> int:
    """The number of logits the model gives: its LM head's output width (a padded head gives more than the
    tokenizer has), else the config's ``vocab_size`` (a multimodal config's text part), 0 if none."""
    import torch

    try:
        head = get_path(hf_model, spec.lm_head)
    except (AttributeError, TypeError):
        head = None
    out, weight = getattr(head, "out_features", None), getattr(head, "weight", None)
    if isinstance(out, int) and out > 0:
        return out
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    config = hf_model.config
    return getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", 0)


def layer_count(hf_model, spec: ArchSpec) -> int:
    """The length of the decoder-layer list the spec names (a config's ``num_hidden_layers`` may count
    sub-blocks: zaya's counts two per decoder module); the config's count only where the list is absent."""
    try:
        return len(get_path(hf_model, spec.layers))
    except (AttributeError, TypeError):
        return num_layers(hf_model.config)


def model_info(model) -> ModelInfo:
    """The :class:`ModelInfo` the model carries (attached on first use if it carries none)."""
    info = _INFO.get(model)
    return info if info is not None else attach(model)


def rename(model, name: str) -> ModelInfo:
    """Give results of ``model`` another name (e.g. ``base+taught-KEY``); the spec is kept."""
    model._module.config._superscopes_name = name
    info = dataclasses.replace(model_info(model), name=name)
    _INFO.put(model, info)
    return info


def model_name(model) -> str:
    """The name results carry: the embedded short name, the hub id or path, else the class."""
    return model_info(model).name


def eos_ids(model) -> set:
    """The token ids that end a generation (generation config and tokenizer)."""
    return set(model_info(model).eos_ids)


def plain_spec(model) -> dict:
    """:attr:`ModelInfo.plain` of an nnsight model: its site spec as builtins, wire-ready."""
    return model_info(model).plain


def context_length(model) -> int | None:
    return model_info(model).context
