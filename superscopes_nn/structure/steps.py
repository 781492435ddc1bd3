"""How a model generates, checked once at load: whether rows may share a batch, whether a patch
must be re-applied at every generation step.

* ``no_batch`` (:func:`batch_reason`): two different prompts of one length generated in one batch must
  give each prompt's logits alone, step by step (RWKV's own recurrent state mixes rows: a batch of 2
  generates other tokens than each row alone). Where not, the engine runs one row per chunk
  (:func:`superscopes_nn.engine.plan.batching`), so plan and execution agree.
* ``rerun_steps`` (:func:`rerun_reason`): a model that returns no cache recomputes the whole sequence
  at every generation step, so a patch written on the prompt pass only would be lost from the second
  step on; the engine re-applies it at every step (``tracer.iter``).

The batch check costs three greedy 2-token generations on an 8-token prompt at load (0.71 s on Gemma 3 270M
on CPU), so it runs only on
models that do not get prefix reuse (:mod:`.caches`: a model's own cache or none, a cache that fails): a
plain ``DynamicCache`` of attention / state layers batches exactly (tests/test_patching.py, test_every_family.py).
"""

from __future__ import annotations

import warnings

import torch

from .caches import reuse_probe
from .positions import Slots, slot_reuse_reason


def _gen(hf_model, ids):
    with warnings.catch_warnings():  # generation's own notices are not the user's
        warnings.simplefilter("ignore")
        out = _generate(hf_model, ids)
    return torch.stack([s.double() for s in out.logits], 1)  # [rows, steps, vocab]


def _generate(hf_model, ids):
    return hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                            output_logits=True, return_dict_in_generate=True, top_p=None, top_k=None,
                            temperature=None, pad_token_id=getattr(hf_model.config, "pad_token_id", None) or 0)


def batch_reason(hf_model, ids: torch.Tensor) -> str:
    """Why rows of ``hf_model`` must not share a batch (``""``: they may), tried on ``ids`` [1, n] and its reverse."""
    two = torch.cat([ids, ids.flip(1)])
    was_training = hf_model.training
    hf_model.eval()
    try:
        with torch.no_grad():
            try:
                alone = torch.cat([_gen(hf_model, two[i:i + 1]) for i in range(2)])
            except Exception:  # noqa: BLE001  (a model that cannot generate one row here: nothing to judge)
                return ""
            try:
                both = _gen(hf_model, two)
            except Exception as err:  # noqa: BLE001
                return (f"generating two rows in one batch fails ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:120] if str(err) else ''}); its rows run one at a time")
    finally:
        hf_model.train(was_training)
    dtype = next(hf_model.parameters()).dtype
    tol = max(1e-3, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3
    err = float(((both - alone).norm(dim=-1) / alone.norm(dim=-1).clamp_min(1e-30)).max())
    if err <= tol:
        return ""
    return (f"two prompts generated in one batch give other logits than each alone (relative error {err:.2g}); "
            "its rows run one at a time")


def checked(hf_model, ids: torch.Tensor, slots: Slots = Slots()) -> dict:
    """``no_reuse`` / ``cache_fails`` (:func:`~.caches.reuse_probe`; a model with ``slots`` beside the prompt's tokens
    gets no reuse, :func:`~.positions.slot_reuse_reason`), ``no_batch`` (:func:`batch_reason`, tried only where reuse
    is refused) and the slot counts of ``hf_model``, as :class:`~superscopes_nn.structure.architectures.ArchSpec` fields."""
    reuse = reuse_probe(hf_model)
    no_reuse = reuse.reason if reuse.cache_fails else slot_reuse_reason(slots) or reuse.reason
    return dict(no_reuse=no_reuse, cache_fails=reuse.cache_fails, no_batch=batch_reason(hf_model, ids) if no_reuse else "",
                slots_before=slots.before, slots_after=slots.after)
