"""The only code that reads or assigns activations inside an nnsight trace.

:mod:`superscopes_nn.structure.architectures` says *where* each site lives (an
:class:`~superscopes_nn.structure.architectures.ArchSpec` of module paths); this module
reads a spec's plain form (:attr:`~superscopes_nn.structure.info.ModelInfo.plain`, a tuple of strings that can
cross the wire to NDIF) and, inside a trace, reads (:func:`read_sources`) or
writes (:func:`write_patches`) the live tensors. A value written is moved to the
device and dtype of the tensor it is written into, at the write.
"""

from __future__ import annotations

import torch

from .architectures import get_path


def site_path(pspec: tuple, layer: int, site: str) -> tuple:
    """``(module path on that layer, is_input)`` of ``site`` (a per-layer path picked for ``layer``)."""
    path, is_input = pspec[2][site]
    return (path if isinstance(path, str) else path[layer]), is_input


def site_tensor(model, pspec: tuple, layer: int, site: str) -> torch.Tensor:
    """The live tensor of ``site`` at ``layer`` inside a trace: [batch, seq, d]."""
    layers_path = pspec[0]
    block = get_path(model, layers_path)[layer]
    path, is_input = site_path(pspec, layer, site)
    env = get_path(block, path)
    value = env.input if is_input else env.output
    return value[0] if isinstance(value, tuple) else value


def read_sources(model, pspec: tuple, reads: list, vectors: dict) -> None:
    """Inside an invoke: store ``site[0, position]`` of every read ``(key, layer, site, position)``."""
    for key, layer, site, pos in reads:
        vectors[key] = site_tensor(model, pspec, layer, site)[0, pos].detach().clone()


def write_patches(model, pspec: tuple, writes: list, patched: list, offset: int = 0) -> None:
    """Inside an invoke: write every patch, one indexed assignment per (layer, site).

    ``writes``: ``(layer, site, batch_rows [n], positions [n], row_indices)`` in forward
    order; ``offset``: tokens served from a reused KV cache (absent from the pass's tensors).
    """
    layers_path = pspec[0]
    for layer, site, b_rows, positions, b_idx in writes:
        path, is_input = site_path(pspec, layer, site)
        env = get_path(get_path(model, layers_path)[layer], path)
        t = env.input if is_input else site_tensor(model, pspec, layer, site)
        value = torch.stack([patched[i].to(t.device) for i in b_idx]).to(t.dtype)
        if is_input:  # a module's input may be the residual itself (OLMo 2): write a copy, never in place
            t = t.clone()
            t[b_rows.to(t.device), (positions - offset).to(t.device)] = value
            env.input = t
        else:
            t[b_rows.to(t.device), (positions - offset).to(t.device)] = value


def lm_head_output(model, pspec: tuple):
    return get_path(model, pspec[1]).output
