"""An independent Patchscope implementation with plain PyTorch forward hooks (no nnsight).

One HF ``generate`` per row with a hook that writes the mapped vector on the prompt pass:
the official papers' per-row protocol. The tests hold the nnsight engine to it token for
token, and ``benchmarks/`` time it as the naive loop. It shares only the site locations
(:mod:`superscopes_nn.structure.architectures`) with the engine. Inputs are built on the model's
device and patched vectors moved to the hooked tensor's device and dtype, so the reference
runs wherever the model sits (CPU or CUDA). A site whose module tensor is flattened to
``[seq, d]`` (one row; ``ArchSpec.flat``) is read and written through a ``[1, seq, d]`` view.
``slots``: positions a model's layer tensors carry in front of the prompt's tokens (cpmant's learned prompt
slots), stated by the caller from the model's own definition (its config), never read from the engine's probe:
a token position ``p`` is read and written at ``slots + p``; logits are the model's own, one per token.
"""

from __future__ import annotations

import torch

from ..structure.architectures import get_path
from ..structure.spec import arch_spec


def _ids(hf_model, ids: list[int]) -> torch.Tensor:
    return torch.tensor([ids], device=hf_model.device)


def _module(hf_model, layer: int, site: str):
    spec = arch_spec(hf_model.config)
    block = get_path(hf_model, spec.layers)[layer]
    return get_path(block, spec.site_module(site, layer))


def _rows(hf_model, layer: int, site: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` as [1, seq, d]: a flattened site's [seq, d] tensor viewed with its one row."""
    return t.view(1, -1, t.shape[-1]) if arch_spec(hf_model.config).is_flat(site, layer) else t


def hf_read(hf_model, ids: list[int], layer: int, site: str) -> torch.Tensor:
    """[seq, d] value of a site on one prompt, captured by a hook."""
    store = {}
    mod = _module(hf_model, layer, site)
    if site == "mlp_in":
        h = mod.register_forward_pre_hook(lambda m, args: store.__setitem__("v", _rows(hf_model, layer, site, args[0])
                                                                          .detach().clone()))
    else:
        def hook(m, args, out):
            store["v"] = _rows(hf_model, layer, site, out[0] if isinstance(out, tuple) else out).detach().clone()

        h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            hf_model(_ids(hf_model, ids), use_cache=False)  # a read needs no cache (some caches fail)
    finally:
        h.remove()
    return store["v"][0]


def _patch_hook(hf_model, layer, site, pos, vec):
    """Write ``vec`` at ``pos`` whenever the sequence length is > 1 (the prompt pass)."""
    mod = _module(hf_model, layer, site)
    if site == "mlp_in":
        def pre(m, args):
            x = args[0]
            if _rows(hf_model, layer, site, x).shape[1] > 1:
                x = x.clone()
                _rows(hf_model, layer, site, x)[:, pos] = vec.to(x.device, x.dtype)
                return (x,) + tuple(args[1:])
            return None

        return mod.register_forward_pre_hook(pre)

    def post(m, args, out):
        t = out[0] if isinstance(out, tuple) else out
        if _rows(hf_model, layer, site, t).shape[1] > 1:
            t = t.clone()
            _rows(hf_model, layer, site, t)[:, pos] = vec.to(t.device, t.dtype)
            return (t,) + tuple(out[1:]) if isinstance(out, tuple) else t
        return None

    return mod.register_forward_hook(post)


def _patched_generate(source_model, target_model, src_ids, src_pos, src_layer, site, tgt_ids, tgt_pos, tgt_layer,
                      f, max_new_tokens: int, tgt_site: str | None, with_logits: bool, slots: int = 0):
    vec = f(hf_read(source_model, src_ids, src_layer, site)[slots + src_pos].float())
    h = _patch_hook(target_model, tgt_layer, tgt_site or site, slots + tgt_pos, vec)
    ids = _ids(target_model, tgt_ids)
    try:
        with torch.no_grad():
            out = target_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                        do_sample=False, output_logits=with_logits, return_dict_in_generate=True,
                                        pad_token_id=getattr(target_model.config, "pad_token_id", None) or 0,
                                        top_p=None, top_k=None, temperature=None)
    finally:
        h.remove()
    eos = target_model.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else (eos or []))
    new = []
    for t in out.sequences[0, len(tgt_ids):].tolist():
        if t in eos:
            break
        new.append(t)
    return new, (torch.stack([s[0] for s in out.logits]).float() if with_logits else None)


def hf_patch_generate(source_model, target_model, src_ids, src_pos, src_layer, site, tgt_ids, tgt_pos, tgt_layer,
                      f, max_new_tokens: int, tgt_site: str | None = None, slots: int = 0) -> list[int]:
    """Patched greedy generation with hooks; returns the new token ids (trimmed at EOS; ``slots``: the module doc)."""
    return _patched_generate(source_model, target_model, src_ids, src_pos, src_layer, site, tgt_ids, tgt_pos,
                             tgt_layer, f, max_new_tokens, tgt_site, False, slots)[0]


def hf_patch_logits(hf_model, src_ids, src_pos, src_layer, site, tgt_ids, tgt_pos, tgt_layer, f,
                    slots: int = 0) -> torch.Tensor:
    """The patched next-token logits at ``tgt_pos`` (``slots``: the module doc)."""
    vec = f(hf_read(hf_model, src_ids, src_layer, site)[slots + src_pos].float())
    h = _patch_hook(hf_model, tgt_layer, site, slots + tgt_pos, vec)
    try:
        with torch.no_grad():
            return hf_model(_ids(hf_model, tgt_ids), use_cache=False).logits[0, tgt_pos]
    finally:
        h.remove()


def hf_patch_generate_logits(source_model, target_model, src_ids, src_pos, src_layer, site, tgt_ids, tgt_pos,
                             tgt_layer, f, max_new_tokens: int):
    """Like :func:`hf_patch_generate`, also returning each step's logits: ``(ids, [steps, vocab])``.

    ``ids`` are trimmed at EOS; the logits cover every step generated.
    """
    return _patched_generate(source_model, target_model, src_ids, src_pos, src_layer, site, tgt_ids, tgt_pos,
                             tgt_layer, f, max_new_tokens, None, True)


def first_ambiguous_step(step_logits: torch.Tensor, tolerance) -> int:
    """The first step whose top-1/top-2 logit margin is below ``tolerance(step_logits[s])``
    (``len(step_logits)`` when none is): the half-precision guarantee holds up to it."""
    for s, logits in enumerate(step_logits):
        top = logits.float().topk(2).values
        if float(top[0] - top[1]) < tolerance(logits):
            return s
    return len(step_logits)


def assert_ids_agree_until_ambiguous(got: list[int], ref: list[int], step_logits: torch.Tensor, tolerance) -> int:
    """The half-precision rule: ``got`` equals ``ref`` up to the first ambiguous step of the reference.

    Returns that step. ``ref`` is trimmed at EOS: an EOS chosen before the ambiguous step must be chosen too.
    """
    k = first_ambiguous_step(step_logits, tolerance)
    if len(ref) < k:
        assert got == ref, f"ids differ before the first ambiguous step {k}: got {got}, reference {ref}"
    else:
        assert got[:k] == ref[:k], f"ids differ before the first ambiguous step {k}: got {got}, reference {ref}"
    return k
