"""The only code that reads or assigns activations inside an nnsight trace.

:mod:`superscopes_nn.structure.architectures` says *where* each site lives (an
:class:`~superscopes_nn.structure.architectures.ArchSpec` of module paths); this module
reads a spec's plain form (:attr:`~superscopes_nn.structure.info.ModelInfo.plain`, a dict of strings that can
cross the wire to NDIF) and, inside a trace, reads (:func:`read_sources`) or
writes (:func:`write_patches`) the live tensors. A value written is moved to the
device and dtype of the tensor it is written into, at the write.

A site whose module tensor is the residual flattened to ``[batch * seq, d]`` (Llama 4's MoE
block, OPT's MLP; a plain site entry's ``flat`` layers) is read and written through a
``[batch, seq, d]`` view of it, so a write lands in the module's own tensor. nnsight narrows a
tensor to one invoke's rows only when its first dimension is the batch: a flattened one is served
whole to every invoke, so a reader passes ``batch=(first_row, rows, seq)`` (its invoke's rows in
the combined batch) and gets its own rows back.

A model whose decoder layers carry positions beside the prompt's tokens (cpmant's learned prompt slots; a plain
spec's ``slots``, :mod:`.positions`) is read and written at ``slots_before + position``, so a position always
names a prompt token; :func:`token_rows` cuts a whole site to the tokens' rows.
"""

from __future__ import annotations

import torch

from .architectures import get_path


def site_path(pspec: dict, layer: int, site: str) -> tuple:
    """``(module path on that layer, is_input)`` of ``site`` (a per-layer path picked for ``layer``)."""
    entry = pspec["sites"][site]
    path = entry["path"]
    return (path if isinstance(path, str) else path[layer]), entry["is_input"]


def site_flat(pspec: dict, layer: int, site: str) -> bool:
    """True when ``site``'s module tensor on ``layer`` is flattened to ``[batch * seq, d]``."""
    return layer in pspec["sites"][site]["flat"]


def slots(pspec: dict) -> tuple:
    """``(before, after)``: the decoder layers' positions before / after the prompt's tokens (``(0, 0)``: none)."""
    before, after = pspec["slots"]
    return int(before), int(after)


def token_rows(pspec: dict, t, n_tokens: int):
    """The prompt's ``n_tokens`` rows of a ``[seq, d]`` site tensor (the slots beside them cut off)."""
    before = slots(pspec)[0]
    return t[before:before + n_tokens]


def _with_slots(pspec: dict, batch):
    """``batch`` ``(first_row, rows, seq)`` with the slots added to the token count ``seq`` (None stays None)."""
    return None if batch is None else (batch[0], batch[1], batch[2] + sum(slots(pspec)))


def _unflatten(t, batch):
    """A ``[rows, seq, d]`` view of a flattened ``[batch * seq, d]`` tensor (the invoke's rows of it)."""
    if batch is None:
        raise ValueError("a site flattened to [batch * seq, d] needs batch=(first_row, rows, seq) to be read")
    row0, rows, seq = batch
    full = t.view(-1, seq, t.shape[-1])
    return full if full.shape[0] == rows else full[row0:row0 + rows]  # served whole unless nnsight narrowed it


def site_tensor(model, pspec: dict, layer: int, site: str, batch: tuple | None = None) -> torch.Tensor:
    """The live tensor of ``site`` at ``layer`` inside a trace: [batch, seq, d] (``batch``: see the module doc; its
    ``seq`` counts the prompt's tokens, the tensor's slots are added here)."""
    block = get_path(model, pspec["layers"])[layer]
    path, is_input = site_path(pspec, layer, site)
    env = get_path(block, path)
    value = env.input if is_input else env.output
    value = value[0] if isinstance(value, tuple) else value
    if not site_flat(pspec, layer, site):
        return value
    return _unflatten(value, _with_slots(pspec, batch))


def read_sources(model, pspec: dict, reads: list, vectors: dict, batch: tuple | None = None) -> None:
    """Inside an invoke: store ``site[0, position]`` of every read ``(key, layer, site, position)``
    (``batch``: this invoke's ``(first_row, rows, seq)`` in the combined batch; a position is a token's, past the slots)."""
    before = slots(pspec)[0]
    for key, layer, site, pos in reads:
        vectors[key] = site_tensor(model, pspec, layer, site, batch)[0, before + pos].detach().clone()


def write_patches(model, pspec: dict, writes: list, patched: list, offset: int = 0, shape: tuple | None = None) -> None:
    """Inside an invoke: write every patch, one indexed assignment per (layer, site).

    ``writes``: ``(layer, site, batch_rows [n], positions [n], row_indices)`` in forward
    order; ``offset``: tokens served from a reused KV cache (absent from the pass's tensors; a model with slots
    never reuses one, so ``offset`` is 0 there and a position is written at ``slots_before + position``);
    ``shape``: ``(rows, seq)`` of the pass (needed by a flattened site only).
    """
    layers_path, shift = pspec["layers"], slots(pspec)[0] - offset
    batch = None if shape is None else (0, *shape)
    for layer, site, b_rows, positions, b_idx in writes:
        path, is_input = site_path(pspec, layer, site)
        env = get_path(get_path(model, layers_path)[layer], path)
        t = env.input if is_input else site_tensor(model, pspec, layer, site, batch)
        value = torch.stack([patched[i].to(t.device) for i in b_idx]).to(t.dtype)
        if is_input:  # a module's input may be the residual itself (OLMo 2): write a copy, never in place
            t = t.clone()
            view = _unflatten(t, _with_slots(pspec, batch)) if site_flat(pspec, layer, site) else t
            view[b_rows.to(t.device), (positions + shift).to(t.device)] = value
            env.input = t
        else:
            t[b_rows.to(t.device), (positions + shift).to(t.device)] = value


def lm_head_output(model, pspec: dict):
    return get_path(model, pspec["lm_head"]).output
