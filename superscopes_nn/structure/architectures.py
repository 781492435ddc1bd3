"""Where things live inside each supported transformer, and what a *site* means.

A *site* is named by its meaning, not by a module, so that reading and writing
agree on every architecture (issue: Gemma's sandwich norms make a naive
``mlp.output`` amplification a no-op, because Gemma passes the MLP output through
a scale-invariant RMSNorm before adding it to the residual stream):

=========  ================================================================
site       meaning
=========  ================================================================
residual   the decoder layer's output (the residual stream after layer l)
attn_out   what the attention block adds to the residual stream
mlp_out    what the MLP block adds to the residual stream
mlp_in     the MLP's input (the pre-MLP residual after the pre-MLP norm)
=========  ================================================================

Each :class:`ArchSpec` says which module each site is read from (its output,
except ``mlp_in`` which is the *input* of the MLP module). Specs are resolved from
the built model by watching one forward pass (:mod:`superscopes_nn.structure.sites_resolver`),
not looked up by family name, so any decoder transformers ships gets its sites where
its blocks actually add to the residual: for Gemma 2/3 ``attn_out``/``mlp_out`` are
the outputs of the post-norms, for OLMo 2 (post-norms only) too, for Phi-3 and
GPT-NeoX the (identity in eval) dropouts just before the residual add, for a MoE
model the whole sparse block. :data:`ARCHITECTURES` keeps the specs resolved for the
tested families, for a config alone (``arch_spec(config)``, e.g. a remote model).
``python -m superscopes_nn.structure.architectures --markdown`` prints the table of them.

Within one layer the sites are reached in the order of :data:`SITE_ORDER`
(attention first, then the MLP's input, its output, and the layer output), which
is the order interventions on one layer must be written in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.identity import ByIdentity

SITES = ("residual", "attn_out", "mlp_in", "mlp_out")
#: The order in which a forward pass reaches the sites of one layer.
SITE_ORDER = {"attn_out": 0, "mlp_in": 1, "mlp_out": 2, "residual": 3}


#: Fields that may hold one value per layer (a tuple) where layers differ (hybrid models).
PER_LAYER = ("attn_out", "mlp_out", "mlp_in", "attn", "mlp", "mlp_norm", "parallel")


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture family.

    Paths are dotted attribute paths from the ``*ForCausalLM`` root (``layers``,
    ``final_norm``, ``lm_head``) or from one decoder layer (the site modules and
    the informational ``attn``, ``mlp``, ``mlp_norm``: the attention, the MLP and
    the pre-MLP norm, ``""`` when there is none). ``missing``: ``(site, reason)``
    pairs of sites the layout has no module for on any layer (asking for one raises).

    Where layers differ (a hybrid model's attention and state-space layers), a field of
    :data:`PER_LAYER` is a tuple with one entry per layer, ``""`` on a layer that lacks
    the site; ``gaps`` holds ``(site, layer, reason)`` for each such layer. ``no_reuse``:
    why a cached prompt prefix cannot be reused on this model (``""``: it can). ``flat``:
    ``(site, layer)`` pairs whose module tensor is the ``[batch, seq, d]`` residual flattened to
    ``[batch * seq, d]`` (row-major: Llama 4's MoE block, OPT's MLP); sites read and write it
    reshaped. ``head_scale``: the scalar the LM head's input is the final norm's output times
    (1.0 but where a model scales it, Inkling's µP width multiplier; :mod:`.final_norm`); ``logit_scale``: the
    scalar its logits are the LM head's output times (Cohere's ``logit_scale``; NaN: no scalar multiple).
    ``no_batch``: why its rows must run one at a time (``""``: they batch; :mod:`.steps`). ``cache_fails``: a
    forward pass with a cache fails (the reuse probe's finding, :mod:`.caches`): the model cannot generate.
    ``slots_before`` / ``slots_after``: positions of the decoder layers' tensors before / after the prompt's
    tokens (cpmant's learned prompt slots; :mod:`.positions`): a position ``p`` is tensor index ``slots_before + p``.
    """

    family: str
    layers: str
    final_norm: str
    lm_head: str
    attn_out: str | tuple  # module whose output is added to the residual by attention
    mlp_out: str | tuple  # module whose output is added to the residual by the MLP
    mlp_in: str | tuple  # module whose *input* is the MLP input
    residual: str = ""  # "" = the decoder layer itself
    parallel: bool | tuple = False  # attention and MLP read the same residual (GPT-J, NeoX)
    attn: str | tuple = ""
    mlp: str | tuple = ""
    mlp_norm: str | tuple = ""
    layout: str = "pre-norm"  # pre-norm | sandwich | post-norm | parallel | hybrid (...)
    moe: bool = False
    missing: tuple = ()
    gaps: tuple = ()
    no_reuse: str = ""
    flat: tuple = ()
    head_scale: float = 1.0
    logit_scale: float = 1.0
    no_batch: str = ""
    cache_fails: bool = False
    slots_before: int = 0
    slots_after: int = 0

    def is_flat(self, site: str, layer: int) -> bool:
        """True when ``site``'s module tensor on ``layer`` is flattened to ``[batch * seq, d]``."""
        return (site, layer) in self.flat

    def at(self, name: str, layer: int):
        """Field ``name`` (one of :data:`PER_LAYER`) on layer ``layer``."""
        v = getattr(self, name)
        return v[layer] if isinstance(v, tuple) else v

    def site_module(self, site: str, layer: int | None = None) -> str | tuple:
        """The path, relative to a decoder layer, of the module holding ``site``: on ``layer``,
        or (``layer=None``) on every layer (a tuple of per-layer paths where they differ)."""
        check_site(site)
        why = dict(self.missing).get(site)
        if why:
            raise ValueError(f"site {site!r} is not available on {self.family}: {why}")
        if site == "residual" or layer is None:
            return getattr(self, site)
        gap = next((r for s, i, r in self.gaps if s == site and i == layer), None)
        if gap:
            raise ValueError(f"site {site!r} is not available on layer {layer} of {self.family}: {gap}")
        return self.at(site, layer)

    def has_site(self, site: str) -> bool:
        """True when ``site`` has a module on at least one layer."""
        return check_site(site) not in dict(self.missing)

    def site_layers(self, site: str, n_layers: int) -> list[int]:
        """The layers (of ``n_layers``) on which ``site`` has a module."""
        if not self.has_site(site):
            return []
        return [i for i in range(n_layers) if not any(s == site and j == i for s, j, _ in self.gaps)]

    @staticmethod
    def site_is_input(site: str) -> bool:
        """True when the site is a module *input* (``mlp_in``), else an output."""
        return site == "mlp_in"

    @property
    def per_layer(self) -> bool:
        """True when some site lives at different paths on different layers (or lacks some)."""
        return bool(self.gaps) or any(isinstance(getattr(self, f), tuple) for f in PER_LAYER)


def _spec(family, layers, final_norm, lm_head, attn_out, mlp_out, mlp, layout="pre-norm", attn="self_attn",
          mlp_norm="post_attention_layernorm", moe=False, missing=()):
    return ArchSpec(family, layers, final_norm, lm_head, attn_out, mlp_out, mlp, parallel=layout == "parallel",
                    attn=attn, mlp=mlp, mlp_norm=mlp_norm, layout=layout, moe=moe, missing=missing)


_M = ("model.layers", "model.norm", "lm_head")
_GEMMA = dict(attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm", mlp="mlp", layout="sandwich",
              mlp_norm="pre_feedforward_layernorm")

#: ``config.model_type`` -> the spec resolved on its tiny test model (tests/test_families.py
#: checks each entry against :func:`superscopes_nn.structure.sites_resolver.resolve_sites`). Used for a
#: config alone; a built model is always resolved from its own forward pass.
ARCHITECTURES: dict[str, ArchSpec] = {
    **{f: _spec(f, *_M, "self_attn", "mlp", "mlp") for f in (
        "llama", "mistral", "qwen2", "qwen3", "gemma", "starcoder2", "granite", "cohere")},
    **{f: _spec(f, *_M, "self_attn", "mlp", "mlp", moe=True) for f in ("mixtral", "qwen3_moe", "gpt_oss")},
    "phi3": _spec("phi3", *_M, "resid_attn_dropout", "resid_mlp_dropout", "mlp"),
    "olmo2": _spec("olmo2", *_M, "post_attention_layernorm", "post_feedforward_layernorm", "mlp", layout="post-norm",
                   mlp_norm=""),
    "gemma2": _spec("gemma2", *_M, **_GEMMA),
    "gemma3_text": _spec("gemma3_text", *_M, **_GEMMA),
    "gemma3": _spec("gemma3", "model.language_model.layers", "model.language_model.norm", "lm_head", **_GEMMA),
    "gpt2": _spec("gpt2", "transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp", "mlp", attn="attn",
                  mlp_norm="ln_2"),
    "gptj": _spec("gptj", "transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp", "mlp", layout="parallel",
                  attn="attn", mlp_norm="ln_1"),
    "gpt_neox": _spec("gpt_neox", "gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head",
                      "post_attention_dropout", "post_mlp_dropout", "mlp", layout="parallel", attn="attention"),
    "falcon": _spec("falcon", "transformer.h", "transformer.ln_f", "lm_head", "self_attention", "mlp", "mlp",
                    layout="parallel", attn="self_attention", mlp_norm="input_layernorm"),
}
ARCHITECTURES["cohere"] = replace(ARCHITECTURES["cohere"], parallel=True, layout="parallel", mlp_norm="input_layernorm",
                                  logit_scale=0.0625)  # the config default logit_scale (1 / 16)

# Beyond plain transformers (testing.tiny_models.HYBRID_ARCHS): per-layer paths as resolved on the tiny model's
# 4 layers (a config alone never serves a per-layer spec: its layer pattern is its own).
_ONE = "each layer adds one block's output (mixer); it has no separate attention and MLP blocks"
_RESTART = ("continuing from a cached prefix does not give the logits of one uncut pass (its state-space / "
            "linear-attention layers restart their state on a multi-token chunk)")
_NO_LENGTH = ("its cache does not report how many prompt tokens it holds (state layers only), which generation "
              "needs to continue from it")
_SSM = dict(layers="backbone.layers", final_norm="backbone.norm_f", lm_head="lm_head", attn_out="", mlp_out="",
            mlp_in="", layout="single-block", missing=tuple((s, _ONE) for s in ("attn_out", "mlp_in", "mlp_out")))
_ALT = lambda a, b: (a, b, a, b)  # noqa: E731  (layers 0, 2 of one kind, 1, 3 of the other)
_HY = dict(layers="model.layers", final_norm="model.norm", lm_head="lm_head")
_JAMBA = dict(_HY, final_norm="model.final_layernorm", attn_out=_ALT("mamba", "self_attn"), mlp_out="feed_forward",
              mlp_in="feed_forward", attn=_ALT("mamba", "self_attn"), mlp="feed_forward", mlp_norm="pre_ff_layernorm",
              no_reuse=_RESTART)
_TWO = "its {} part adds two modules' outputs ({} + {}); no one module outputs what it adds"
ARCHITECTURES.update({
    "mamba": ArchSpec("mamba", **_SSM, no_reuse=_NO_LENGTH),
    "falcon_mamba": ArchSpec("falcon_mamba", **_SSM, no_reuse=_NO_LENGTH),
    "mamba2": ArchSpec("mamba2", **_SSM, no_reuse=_NO_LENGTH),
    "jamba": ArchSpec("jamba", **_JAMBA, moe=True),
    "bamba": ArchSpec("bamba", **_JAMBA),
    "falcon_h1": ArchSpec("falcon_h1", **dict(_HY, final_norm="model.final_layernorm"), attn_out="",
                          mlp_out="feed_forward", mlp_in="feed_forward", mlp="feed_forward", mlp_norm="pre_ff_layernorm",
                          missing=(("attn_out", _TWO.format("attention", "mamba", "self_attn")),)),
    "granitemoehybrid": ArchSpec("granitemoehybrid", **_HY, attn_out=_ALT("mamba", "self_attn"), mlp_out="", mlp_in="",
                                 attn=_ALT("mamba", "self_attn"), mlp="block_sparse_moe", mlp_norm="post_attention_layernorm",
                                 moe=True, missing=tuple((s, _TWO.format("MLP", "block_sparse_moe", "shared_mlp") + " or reads")
                                                         for s in ("mlp_in", "mlp_out"))),
    "nemotron_h": ArchSpec("nemotron_h", **dict(_SSM, layers="model.layers", final_norm="model.norm_f")),
    "lfm2": ArchSpec("lfm2", **dict(_HY, final_norm="model.embedding_norm"), attn_out=_ALT("conv", "self_attn"),
                     mlp_out="feed_forward", mlp_in="feed_forward", attn=_ALT("conv", "self_attn"), mlp="feed_forward",
                     mlp_norm="ffn_norm"),
    "qwen3_next": ArchSpec("qwen3_next", **_HY, attn_out=_ALT("linear_attn", "self_attn"), mlp_out="mlp", mlp_in="mlp",
                           attn=_ALT("linear_attn", "self_attn"), mlp="mlp", mlp_norm="post_attention_layernorm", moe=True),
    "olmo_hybrid": ArchSpec("olmo_hybrid", **_HY, attn_out=_ALT("linear_attn", "post_attention_layernorm"),
                            mlp_out=_ALT("mlp", "post_feedforward_layernorm"), mlp_in="mlp",
                            attn=_ALT("linear_attn", "self_attn"), mlp="mlp", mlp_norm=_ALT("post_attention_layernorm", ""),
                            layout="hybrid (pre-norm, post-norm)"),
    "flex_olmo": _spec("flex_olmo", *_M, "post_attention_layernorm", "post_feedforward_layernorm", "mlp",
                       layout="post-norm", mlp_norm="", moe=True),
    "recurrent_gemma": ArchSpec("recurrent_gemma", **dict(_HY, final_norm="model.final_norm"), attn_out="temporal_block",
                                mlp_out="mlp_block", mlp_in="mlp_block", attn="temporal_block", mlp="mlp_block",
                                mlp_norm="channel_pre_norm", no_reuse="the model returns no cache from a forward pass"),
})

# Flattened block outputs, attention fused with its norms, transformer blocks feeding a Mamba block, a
# re-normalized stream (testing.FLAT_ARCHS, tests/test_flat_families.py), as resolved on the tiny models.
_MAMBA_ONLY = ("layers 0, 2: each layer adds one block's output (mamba); it has no separate attention and MLP blocks; "
               "layers 1, 3: each layer adds one block's output (mamba_decoder.mamba); it has no separate attention and "
               "MLP blocks ({}, linear feed only that block's input, not the residual stream)")
_RENORM = ("the layer re-normalizes its residual stream: its output is post_attention_layernorm's output + mlp, not its "
           "input plus what the blocks add; no module outputs what a block adds to the stream it reads")
_NONE = dict(attn_out="", mlp_out="", mlp_in="")
ARCHITECTURES.update({
    "llama4_text": ArchSpec("llama4_text", *_M, "self_attn", "feed_forward", "feed_forward", attn="self_attn",
                            mlp="feed_forward", mlp_norm="post_attention_layernorm", moe=True,
                            flat=(("mlp_out", 1), ("mlp_out", 3))),
    "opt": ArchSpec("opt", "model.decoder.layers", "model.decoder.final_layer_norm", "lm_head", "self_attn", "fc2", "fc1",
                    attn="self_attn", mlp="fc1", mlp_norm="final_layer_norm",
                    flat=tuple((s, i) for i in range(4) for s in ("mlp_out", "mlp_in"))),
    "dbrx": ArchSpec("dbrx", "transformer.blocks", "transformer.norm_f", "lm_head", "norm_attn_norm.attn", "ffn", "ffn",
                     attn="norm_attn_norm.attn", mlp="ffn", mlp_norm="norm_attn_norm.norm_2"),
    **{f: ArchSpec(f, "model.layers", "model.final_layernorm", "lm_head", **_NONE, layout="single-block", no_reuse=r,
                   missing=tuple((s, _MAMBA_ONLY.format(b)) for s in ("attn_out", "mlp_in", "mlp_out")))
       for f, b, r in (("zamba", "shared_transf", _RESTART), ("zamba2", "shared_transformer", ""))},
    "minimax": ArchSpec("minimax", *_M, **_NONE, layout="unknown", missing=tuple((s, _RENORM) for s in (
        "attn_out", "mlp_in", "mlp_out")), no_reuse="its cache class MiniMaxCache is not one whose tensors are copied per row"),
})

#: Families whose table ``no_reuse`` / ``no_batch`` are the load-time probes' answers on their tiny model
#: (:mod:`.caches`, :mod:`.steps`; every cache kind, attention included): a built model is probed again, on its
#: own weights; only a config alone (a remote model) takes the table's answer.
PROBED = frozenset(ARCHITECTURES)

#: Config switches that change a family's layout: a config alone is looked up only in the
#: layout its ARCHITECTURES entry was resolved in (any built model resolves by itself).
CONFIG_LAYOUT = {
    "gpt_neox": lambda c: bool(getattr(c, "use_parallel_residual", True)),
    "falcon": lambda c: bool(getattr(c, "parallel_attn", True) or getattr(c, "new_decoder_architecture", False)),
    "granite": lambda c: getattr(c, "residual_multiplier", 1.0) == 1.0,  # else no module holds attn_out/mlp_out
}
# id(config) -> spec resolved from the model built with that config (filled by arch_spec(model)).
_RESOLVED = ByIdentity()  # config -> the spec resolved for it


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    return site


def remember(config, spec: ArchSpec) -> None:
    """Make ``arch_spec(config)`` return ``spec`` for as long as ``config`` lives."""
    _RESOLVED.put(config, spec)


def remembered(config) -> ArchSpec | None:
    """The spec resolved for this very ``config`` object, if any."""
    return _RESOLVED.get(config)


def _config_value(config, names):
    for cfg in (config, getattr(config, "text_config", None)):
        for name in names:
            if cfg is not None and getattr(cfg, name, None) is not None:
                return int(getattr(cfg, name))
    return None


def num_layers(config) -> int:
    n = _config_value(config, ("num_hidden_layers", "n_layer", "num_layers"))
    if n is not None:
        return n
    raise ValueError(f"cannot find the layer count in config {type(config).__name__}")


def hidden_size(config) -> int:
    d = _config_value(config, ("hidden_size", "n_embd", "d_model"))
    if d is not None:
        return d
    raise ValueError(f"cannot find the hidden size in config {type(config).__name__}")


def get_path(root, path: str):
    """``get_path(model, "model.layers")`` -> ``model.model.layers`` (works on envoys too)."""
    obj = root
    for part in path.split(".") if path else []:
        obj = getattr(obj, part)
    return obj


def families_markdown(specs: dict[str, ArchSpec] | None = None) -> str:
    """The table of families and where each site lives (docs/families.md embeds it)."""
    specs = ARCHITECTURES if specs is None else specs
    rows = ["| family | layers `[l]` | layout | `residual` | `attn_out` | `mlp_in` | `mlp_out` | pre-MLP norm | MoE "
            "| final norm | LM head | prefix reuse |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def grouped(value, fmt, none):
        if not isinstance(value, tuple):
            return fmt(value) if value else none
        by: dict = {}
        for i, v in enumerate(value):
            by.setdefault(v, []).append(str(i))
        return "; ".join(f"{fmt(v) if v else none} (layers {', '.join(ls)})" for v, ls in by.items())

    def where(spec, site, io):
        if not spec.has_site(site):
            return "not available"
        flat = sorted({i for s, i in spec.flat if s == site})
        note = f" (flattened to [B*S, d] on layer{'s' if len(flat) > 1 else ''} {', '.join(map(str, flat))})" if flat else ""
        return grouped(spec.site_module(site), lambda p: f"`{p}` {io}", "none") + note

    for name in sorted(specs):
        s = specs[name]
        rows.append(f"| {name} | `{s.layers}` | {s.layout} | layer output | {where(s, 'attn_out', 'output')} | "
                    f"{where(s, 'mlp_in', 'input')} | {where(s, 'mlp_out', 'output')} | "
                    f"{grouped(s.mlp_norm, lambda p: f'`{p}`', 'none')} | {'yes' if s.moe else ''} | "
                    f"`{s.final_norm}` | `{s.lm_head}` | {'no' if s.no_reuse else 'yes'} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m superscopes_nn.structure.architectures --markdown")
    print(families_markdown(), end="")
