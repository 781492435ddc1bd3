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
except ``mlp_in`` which is the *input* of the MLP module). For Gemma 2/3 the
``attn_out``/``mlp_out`` sites are the outputs of ``post_attention_layernorm`` /
``post_feedforward_layernorm``; for GPT-NeoX they are the (identity in eval)
dropout modules that sit just before the residual add.

Within one layer the sites are reached in the order of :data:`SITE_ORDER`
(attention first, then the MLP's input, its output, and the layer output), which
is the order interventions on one layer must be written in.
"""

from __future__ import annotations

from dataclasses import dataclass

SITES = ("residual", "attn_out", "mlp_in", "mlp_out")
#: The order in which a forward pass reaches the sites of one layer.
SITE_ORDER = {"attn_out": 0, "mlp_in": 1, "mlp_out": 2, "residual": 3}


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture family.

    Paths are dotted attribute paths from the ``*ForCausalLM`` root (``layers``,
    ``final_norm``, ``lm_head``) or from one decoder layer (the site modules).
    """

    family: str
    layers: str
    final_norm: str
    lm_head: str
    attn_out: str  # module whose output is added to the residual by attention
    mlp_out: str  # module whose output is added to the residual by the MLP
    mlp_in: str  # module whose *input* is the MLP input
    residual: str = ""  # "" = the decoder layer itself
    parallel: bool = False  # attention and MLP read the same residual (GPT-J, NeoX)

    def site_module(self, site: str) -> str:
        """The path, relative to a decoder layer, of the module holding ``site``."""
        check_site(site)
        return getattr(self, site)

    @staticmethod
    def site_is_input(site: str) -> bool:
        """True when the site is a module *input* (``mlp_in``), else an output."""
        return site == "mlp_in"


_LLAMA = ArchSpec("llama", "model.layers", "model.norm", "lm_head", "self_attn", "mlp", "mlp")
_GEMMA = ArchSpec(
    "gemma", "model.layers", "model.norm", "lm_head",
    "post_attention_layernorm", "post_feedforward_layernorm", "mlp",
)
_GPT2 = ArchSpec("gpt2", "transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp", "mlp")
_NEOX = ArchSpec(
    "gpt_neox", "gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head",
    "post_attention_dropout", "post_mlp_dropout", "mlp", parallel=True,
)
_GPTJ = ArchSpec("gptj", "transformer.h", "transformer.ln_f", "lm_head", "attn", "mlp", "mlp", parallel=True)

#: ``config.model_type`` -> spec.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "qwen2": ArchSpec("qwen2", "model.layers", "model.norm", "lm_head", "self_attn", "mlp", "mlp"),
    "gemma3_text": _GEMMA,
    "gemma2": _GEMMA,
    "gpt2": _GPT2,
    "gpt_neox": _NEOX,
    "gptj": _GPTJ,
}


def check_site(site: str) -> str:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; choose one of {', '.join(SITES)}")
    return site


def arch_spec(config) -> ArchSpec:
    """The :class:`ArchSpec` for a transformers config (by ``config.model_type``)."""
    model_type = getattr(config, "model_type", None)
    text_config = getattr(config, "text_config", None)
    if model_type not in ARCHITECTURES and text_config is not None:
        model_type = getattr(text_config, "model_type", model_type)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r}; supported model types are "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model_type]


def num_layers(config) -> int:
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise ValueError(f"cannot find the layer count in config {type(config).__name__}")


def hidden_size(config) -> int:
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(config, name, None) is not None:
            return int(getattr(config, name))
    raise ValueError(f"cannot find the hidden size in config {type(config).__name__}")


def get_path(root, path: str):
    """``get_path(model, "model.layers")`` -> ``model.model.layers`` (works on envoys too)."""
    obj = root
    for part in path.split(".") if path else []:
        obj = getattr(obj, part)
    return obj
