"""Where the prompt's tokens sit in the decoder layers' tensors: probed once, at load.

Most decoders carry one position per prompt token. Some carry more: cpmant puts ``prompt_length``
learned slots in front of the tokens (11 positions for a 7-token prompt; its logits and its own
``output_hidden_states`` drop them again). A ``position`` must still index the prompt's own tokens,
so :func:`token_slots` finds, on the resolver's probe prompt, how many positions come before the
tokens and after them:

* the first decoder layer's input is read on the prompt, on the prompt with its first token
  changed, with its last token changed, and with its last token dropped;
* the layout is mapped when changing token ``j`` changes exactly one position of that input,
  ``before + j`` for one fixed ``before`` (what the embedding of token ``j`` lands on), the shorter
  prompt has one position fewer (so ``after``, the positions behind the tokens, is fixed too), and the
  logits carry one position per token;
* anything else (a stream of its own per token, a sequence-second layout) is refused in one line.

The counts are recorded as ``ArchSpec.slots_before`` / ``slots_after`` (``plain["slots"]``), and every
read and write of :mod:`.sites`, ``collect`` and the logit lens index ``before + position``. A model with
slots gets no prefix reuse (:func:`slot_reuse_reason`): its cache holds the slots too, so the cache of a
cut prompt is not the cache of the prompt's first tokens alone. The probe costs four forward passes of the
8-token prompt, on such models only (a model with one position per token is not probed further): 0.17-0.42 s on
tiny cpmant, 0.15 s on tiny xlnet, 0.9-4.4 s on tiny prophetnet (CPU, 2 cores under load; median of 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Slots", "token_slots", "slot_reuse_reason"]


@dataclass(frozen=True)
class Slots:
    """Positions of the decoder layers' tensors before / after the prompt's tokens; ``reason``: why the
    layout cannot be mapped to the tokens (``""``: it can)."""

    before: int = 0
    after: int = 0
    reason: str = ""


def _first_input(hf_model, layer, ids):
    """``(the first decoder layer's input tensor, the logits)`` of one no-cache forward on ``ids``."""
    got = {}

    def pre(mod, args, kwargs):
        t = next((a for a in args if torch.is_tensor(a)), kwargs.get("hidden_states"))
        got.setdefault("x", t.detach().clone() if torch.is_tensor(t) else None)

    handle = layer.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            out = hf_model(ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        handle.remove()
    return got.get("x"), getattr(out, "logits", None)


def _changed(a, b) -> list | None:
    """The indices along dim 1 where ``a`` and ``b`` differ (both [batch, L, ...]; None: their shapes differ)."""
    if a is None or b is None or a.shape != b.shape:
        return None
    return torch.nonzero((a != b).flatten(2).any(-1).any(0)).flatten().tolist()


def _swap(ids, j: int, vocab: int):
    """``ids`` with token ``j`` replaced by another mid-vocabulary id (never 0, often a padding id)."""
    out = ids.clone()
    v = int(ids[0, j])
    out[0, j] = v + 1 if 0 < v + 1 < vocab else max(1, v - 1)
    return out


def token_slots(hf_model, first_layer, first_call, ids) -> Slots:
    """The :class:`Slots` of ``hf_model`` on the probe prompt ``ids`` [1, n] (``first_call``: the resolver's
    recorded call of ``first_layer``, the first decoder layer)."""
    x = None if first_call is None else first_call["inp"]
    n = ids.shape[1]
    if x is None or x.dim() != 3 or x.shape[1] == n:
        return Slots()
    was_training = hf_model.training
    hf_model.eval()
    try:
        vocab = hf_model.get_input_embeddings().num_embeddings
        x, logits = _first_input(hf_model, first_layer, ids)
        moved = {j: _changed(x, _first_input(hf_model, first_layer, _swap(ids, j, vocab))[0]) for j in (0, n - 1)}
        shorter = _first_input(hf_model, first_layer, ids[:, :-1])[0]
    finally:
        hf_model.train(was_training)
    length = x.shape[1]  # the probe's own pass (the recorded call only said it differs from n)
    head = f"its decoder layers carry {length} positions for a {n}-token prompt"
    if any(m is None for m in moved.values()):
        return Slots(reason=f"{head}, and changing one token changes the shape of the first layer's input; "
                            "positions cannot be mapped to the prompt's own tokens")
    before = moved[0][0] if len(moved[0]) == 1 else None
    if before is None or moved[n - 1] != [before + n - 1]:
        j = 0 if before is None else n - 1
        return Slots(reason=f"{head}, and changing token {j} changes position{'s' if len(moved[j]) != 1 else ''} "
                            f"{', '.join(map(str, moved[j][:6])) or 'none'} of the first layer's input, not one "
                            "position at the token's index plus a fixed offset; positions cannot be mapped to the "
                            "prompt's own tokens")
    if shorter is None or shorter.shape[1] != length - 1:
        got = "?" if shorter is None else shorter.shape[1]
        return Slots(reason=f"{head} and {got} for {n - 1}: besides the tokens (at {before}..{before + n - 1}) "
                            "it carries positions whose number grows with the prompt, not a fixed number of slots; "
                            "positions cannot be mapped to the prompt's own tokens")
    if logits is None or logits.dim() != 3 or logits.shape[1] != n:
        got = "no" if logits is None or logits.dim() != 3 else logits.shape[1]
        return Slots(reason=f"{head} and its logits {got} positions, not one per token; positions cannot be mapped "
                            "to the prompt's own tokens")
    return Slots(before=before, after=length - n - before)


def slot_reuse_reason(slots: Slots) -> str:
    """Why a model with slots gets no prefix reuse (``""``: it has none)."""
    if not (slots.before or slots.after):
        return ""
    return (f"its decoder layers carry {slots.before + slots.after} positions beside the prompt's tokens (learned slots "
            "or memory tokens, held in its cache too), so a cut prompt's cache is not the cache of its first tokens")
