"""Layers the two-block fit of :mod:`.sites_resolver` does not read at first sight.

The resolver looks for two sub-modules of a decoder layer whose outputs add up to what the
layer adds to its residual stream. Four layouts need more than its first look:

* a block returning the residual **flattened** to ``[batch * seq, d]`` (Llama 4's MoE block,
  OPT's MLP, whose layer reshapes the stream before its norm): :func:`layer_calls` views such
  a tensor as ``[batch, seq, d]`` and marks it, so the site is resolved, recorded in
  ``ArchSpec.flat`` and read / written reshaped (:mod:`.sites`);
* attention **fused with its norms** into one module that returns the residual itself
  (DBRX's ``norm_attn_norm``: ``(x + attn(norm_1 x), norm_2(x + attn))``): :func:`layer_calls`
  with ``depth=2`` replaces such a module by its own sub-modules, where the attention is;
* a block **shared** between layers (Zamba's ``shared_transf``, Zamba 2's
  ``shared_transformer``, the same weights in every hybrid layer): :func:`shared_children`;
* a layer holding **several attention / MLP pairs** (LongCat-Flash: ``self_attn``, ``mlps`` and both norms
  as ``ModuleList``s of 2, one decoder layer per two of the config's layers): :func:`sub_block_reason`
  refuses it (no one site per layer);
* a layer that **re-normalizes its residual stream** (MiniMax: ``h = norm_1(x)``,
  ``h = norm_2(h + attn(h))``, ``out = h + mlp(h)``): no block adds to the layer input;
  :func:`renorm_reason` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch

__all__ = ["Fit", "fit_sum", "is_moe", "layer_calls", "fused_children", "param_count", "shared_children", "renorm_reason",
           "sub_block_reason"]


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def is_moe(module) -> bool:
    """A sparse block: experts as a ModuleList or as one stacked (3-d) weight."""
    return any(isinstance(m, torch.nn.ModuleList) for m in module.modules()) or any(
        p.dim() >= 3 for p in module.parameters())


@dataclass(frozen=True)
class Fit:
    """``modules`` whose outputs times ``scales`` sum to a target, within ``residual``."""

    residual: float
    modules: tuple
    scales: list


def fit_sum(kids, adds, target, scale, size) -> Fit | None:
    """The ``size`` modules (in call order) whose outputs, each times a positive scale, sum to ``target``
    (least squares, within ``scale``): the best :class:`Fit`, or None."""
    best = None
    for combo in combinations(adds, size):
        cols = torch.stack([kids[k]["out"].double().flatten() for k in combo], 1)
        s = torch.linalg.lstsq(cols, target.unsqueeze(1)).solution.squeeze(1)
        res = (target - cols @ s).norm().item()
        if res <= scale and s.min() > 1e-3 and (best is None or res < best.residual):  # a block adds a positive multiple
            best = Fit(res, combo, s.tolist())
    return best


def _flat(t, x) -> bool:
    """True when ``t`` is ``x`` ([batch, seq, d]) flattened to [batch * seq, d]."""
    return t is not None and t.dim() == 2 and tuple(t.shape) == (x.shape[0] * x.shape[1], x.shape[-1])


def layer_calls(rec, prefix: str, x, depth: int = 1) -> dict:
    """The recorded calls of a layer's sub-modules (name relative to the layer -> call): those
    called once, with ``params`` (:func:`param_count`) / ``moe`` (:func:`is_moe`) of the module; a
    flattened input or output viewed as ``[batch, seq, d]`` and marked ``flat_in`` / ``flat_out``. ``depth=2``: a sub-module returning
    the residual itself (:func:`fused_children`) is replaced by its own sub-modules."""
    fused = set(fused_children(rec, prefix, x)) if depth == 2 else set()
    kids = {}
    for name in rec.calls:
        if not name.startswith(prefix + "."):
            continue
        rel = name[len(prefix) + 1:]
        top, _, sub = rel.partition(".")
        if (sub and top not in fused) or (not sub and top in fused) or sub.count("."):
            continue
        call = rec.once(name)
        if call is None:
            continue
        call = dict(call, params=param_count(rec.modules[name]), moe=is_moe(rec.modules[name]), flat_in=False,
                    flat_out=False)
        for key in ("inp", "out"):
            if _flat(call[key], x):
                call[key], call["flat_in" if key == "inp" else "flat_out"] = call[key].view(x.shape), True
        kids[rel] = call
    return kids


def fused_children(rec, prefix: str, x) -> list:
    """Sub-modules of a layer whose output is the layer input plus one of their own sub-modules'
    outputs: a block fused with the residual add (and its norms) into one module."""
    out = []
    for name in rec.calls:
        rel = name[len(prefix) + 1:] if name.startswith(prefix + ".") else None
        call = rec.once(name) if rel and "." not in rel else None
        if call is None or call["out"] is None or call["out"].shape != x.shape:
            continue
        delta = call["out"] - x
        for sub in rec.calls:
            inner = rec.once(sub) if sub.startswith(name + ".") and "." not in sub[len(name) + 1:] else None
            if inner is not None and inner["out"] is not None and inner["out"].shape == x.shape and torch.allclose(
                    inner["out"], delta, rtol=1e-4, atol=1e-5 * float(x.abs().max())):
                out.append(rel)
                break
    return out


def shared_children(hf_layers) -> dict:
    """``{layer index: {child name: [the other layers with the same weights]}}`` for children of
    decoder layers that share their parameters with a child of another layer."""
    owner: dict = {}
    for i, layer in enumerate(hf_layers):
        for c, m in layer.named_children():
            for p in m.parameters():
                owner.setdefault(id(p), set()).add(i)
    shared: dict = {}
    for i, layer in enumerate(hf_layers):
        for c, m in layer.named_children():
            others = sorted(set().union(*(owner[id(p)] for p in m.parameters())) - {i}) if any(
                True for _ in m.parameters()) else []
            if others:
                shared.setdefault(i, {})[c] = others
    return shared


def shared_reason(shared: dict, fit, short: bool = False) -> str:
    """Why a layer running a block shared with other layers has no attn_out / mlp_out module."""
    name, others = next(iter(shared.items()))
    if short:
        return f"{name} is one block shared with layer{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
    adds = f" (what it adds is {' + '.join(fit.modules)})" if fit is not None else ""
    return (f"its {name} is one block shared with layer{'s' if len(others) > 1 else ''} "
            f"{', '.join(map(str, others))} (the same weights){adds}; the shared block's attention and MLP do not "
            "add to this layer's residual stream, and no module of its own outputs what an attention or an MLP "
            "block adds")


def renorm_reason(kids, x, y, scale) -> str:
    """A reason when the layer output is a norm's output plus a block's (the layer re-normalizes its
    residual stream rather than adding to its input), else ``""`` (by :func:`fit_sum`)."""
    d = x.shape[-1]
    adds = [k for k, c in kids.items() if c["out"] is not None and c["out"].shape == x.shape]
    for n in (1, 2):
        f = fit_sum(kids, adds, y.double().flatten(), scale, n)
        if f is not None and kids[f.modules[0]]["params"] <= 2 * d and not torch.equal(kids[f.modules[0]]["out"], x):
            norm = f.modules[0]
            return (f"the layer re-normalizes its residual stream: its output is {norm}'s output"
                    f"{' + ' + f.modules[1] if n == 2 else ''}, not its input plus what the blocks add; no module outputs "
                    "what a block adds to the stream it reads")
    return ""


def sub_block_reason(family: str, hf_layers, n_config: int) -> str:
    """A reason when each decoder layer holds several attention / MLP sub-blocks (two or more child
    ``ModuleList``s of one length >= 2, e.g. ``self_attn`` and ``mlps``), else ``""``."""
    layer = hf_layers[0]
    lists = {c: len(m) for c, m in layer.named_children() if isinstance(m, torch.nn.ModuleList) and len(m) >= 2}
    by_len: dict = {}
    for c, k in lists.items():
        by_len.setdefault(k, []).append(c)
    pairs = next(((k, cs) for k, cs in sorted(by_len.items()) if len(cs) >= 2), None)
    if pairs is None:
        return ""
    k, cs = pairs
    return (f"{family}: each decoder layer holds {k} attention / MLP sub-blocks ({', '.join(f'{c}[0..{k - 1}]' for c in cs)}"
            f"; {len(hf_layers)} layers for the config's {n_config}), not one attention and one MLP; sites per "
            "sub-block are not supported, so no site is one module per layer")


def layout_reason(family: str, hf_layers, config, slots) -> str:
    """Why the decoder layers cannot be addressed one site per layer and position (``""``: they can):
    several attention / MLP sub-blocks per layer (:func:`sub_block_reason`; ``config``'s ``num_hidden_layers``
    named beside the list's length), or positions the probe could not map to the prompt's tokens (``slots``, a
    :class:`~superscopes_nn.structure.positions.Slots`)."""
    n_config = getattr(config, "num_hidden_layers", len(hf_layers))
    return sub_block_reason(family, hf_layers, n_config) or (f"{family}: {slots.reason}" if slots.reason else "")
