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
    why a cached prompt prefix cannot be reused on this model (``""``: it can).
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
ARCHITECTURES["cohere"] = replace(ARCHITECTURES["cohere"], parallel=True, layout="parallel", mlp_norm="input_layernorm")

#: Config switches that change a family's layout: a config alone is looked up only in the
#: layout its ARCHITECTURES entry was resolved in (any built model resolves by itself).
_CONFIG_LAYOUT = {
    "gpt_neox": lambda c: bool(getattr(c, "use_parallel_residual", True)),
    "falcon": lambda c: bool(getattr(c, "parallel_attn", True) or getattr(c, "new_decoder_architecture", False)),
    "granite": lambda c: getattr(c, "residual_multiplier", 1.0) == 1.0,  # else no module holds attn_out/mlp_out
}
# id(config) -> spec resolved from the model built with that config (filled by arch_spec(model)).
_RESOLVED: dict[int, tuple] = {}  # id -> (weakref to the config, spec)


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    return site


def remember(config, spec: ArchSpec) -> None:
    """Make ``arch_spec(config)`` return ``spec`` for as long as ``config`` lives."""
    import weakref

    key = id(config)

    def forget(ref):
        if _RESOLVED.get(key, (None,))[0] is ref:
            del _RESOLVED[key]

    _RESOLVED[key] = (weakref.ref(config, forget), spec)


def remembered(config) -> ArchSpec | None:
    """The spec resolved for this very ``config`` object, if any."""
    ref, spec = _RESOLVED.get(id(config), (None, None))
    return spec if ref is not None and ref() is config else None


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
        return grouped(spec.site_module(site), lambda p: f"`{p}` {io}", "none")

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
