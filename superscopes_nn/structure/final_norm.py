"""Find the final norm between the last decoder layer and the LM head, from one recorded forward pass.

The final norm is the module that reads the last decoder layer's output and whose output the LM
head reads (on the positions the head ran on). Accepted too (issue 40):

* a norm module called more than once (nanochat calls its ``norm`` on the embeddings and again
  after the last layer): the call that reads the last layer's output counts;
* a norm followed by a scalar scale before the head (Inkling divides by its µP width multiplier):
  the scale is recorded (``ArchSpec.head_scale``) and the logit lens applies it;
* a head reading the norm's output on some of its positions only: the tokens' positions of a model
  carrying slots beside them (cpmant; :mod:`.positions`), any window of the norm's positions.

A scale of the head's output (Cohere's ``logit_scale``, Granite's ``logits_scaling``) is read off the
same pass (:func:`logit_scale`, ``ArchSpec.logit_scale``): the lens applies it too.

Anything else is refused, naming what sits between the last layer and the head (a post-norm model
with no final norm: the head reads the layer output itself; a BERT-style prediction transform).
"""

from __future__ import annotations

import torch



#: Config fields naming a logit soft cap ``cap * tanh(logits / cap)`` (Gemma 2, RecurrentGemma, xLSTM): the lens
#: applies it from the config (:func:`softcap`), so :func:`logit_scale` is not read where one is set.
SOFTCAP_NAMES = ("final_logit_softcapping", "logits_soft_cap", "output_logit_soft_cap")


def softcap(config) -> float | None:
    """The logit soft cap a model's config sets (None: none)."""
    text = config.get_text_config()
    return next((float(getattr(text, k)) for k in SOFTCAP_NAMES if getattr(text, k, None)), None)


class FinalNormError(ValueError):
    """No final norm: the message says what the LM head reads instead."""


def _norm(t) -> float:
    return float(t.double().norm())


def _scale(out: torch.Tensor, head_in: torch.Tensor, tol: float) -> float | None:
    """``s`` with ``head_in == s * out`` (within ``tol``), else None."""
    a, b = out.double().flatten(), head_in.double().flatten()
    den = float(a @ a)
    if den == 0:
        return None
    s = float(a @ b) / den
    return s if _norm(b - s * a) <= tol * (_norm(b) + 1e-30) else None


def _windows(t, k: int):
    """The ``[batch, k, d]`` windows of ``t`` along its positions, the last first (the head runs on the last
    tokens; positions a model carries behind its tokens, :mod:`.positions`, come after them)."""
    return (t[:, i - k:i] for i in range(t.shape[1], k - 1, -1))


def find_final_norm(rec, path: str, n: int, family: str, tol: float) -> tuple[str, float]:
    """``(module path, head_scale)`` of the final norm in ``rec`` (a sites-resolver recording)."""
    last, head = rec.once(f"{path}.{n - 1}"), rec.once("@head")
    h = None if head is None else head["inp"]
    if h is None or h.dim() != 3:
        raise FinalNormError(f"{family}: its LM head input was not recorded as a [batch, seq, d] tensor")
    parent = path.rpartition(".")[0]
    y = last["out"]
    readers = []
    for name, calls in rec.calls.items():
        if name.startswith(path + ".") or name == "@head" or (parent and not name.startswith(parent + ".")):
            continue
        for c in calls:
            if (c["inp"] is not None and c["out"] is not None and c["inp"].shape == y.shape and torch.equal(c["inp"], y)
                    and c["out"].dim() == 3 and c["out"].shape[-1] == h.shape[-1]):
                for tail in _windows(c["out"], h.shape[1]):
                    if torch.equal(tail, h):
                        return name, 1.0
                    s = _scale(tail, h, tol)
                    if s is not None:
                        return name, s
                readers.append(name)
    if y.shape[-1] == h.shape[-1] and any(torch.equal(w, h) for w in _windows(y, h.shape[1])):
        why = "the LM head reads the last decoder layer's output itself (no norm between them)"
    elif readers:
        why = (f"{', '.join(readers)} reads the last decoder layer's output but the LM head reads something else "
               "computed from it (not a norm's output or a scalar multiple of it)")
    else:
        why = ("the LM head reads neither the last decoder layer's output nor the output of a module beside the decoder "
               "layers that reads it (some other computation, e.g. a prediction transform, sits between them)")
    raise FinalNormError(f"{family}: no final norm found between the last decoder layer and the LM head: {why}")


def logit_scale(rec, config, tol: float) -> float:
    """``s`` with the model's logits == ``s`` x the LM head's output on the recorded pass (1.0 where the
    model soft-caps its logits, which the lens does from the config; NaN where they are no multiple of it)."""
    head, logits = rec.once("@head"), getattr(rec, "logits", None)
    if head is None or logits is None or softcap(config):
        return 1.0
    out = head["out"]
    if out is None or out.shape[-1] != logits.shape[-1]:
        return float("nan")
    out = out[:, -logits.shape[1]:]
    if torch.equal(out, logits):
        return 1.0
    s = _scale(out, logits, tol)
    return float("nan") if s is None else s
