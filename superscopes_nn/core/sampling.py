"""Sampled decoding, per row and independent of batching.

Every run is greedy unless it is given a :class:`Sampling`::

    from superscopes_nn import LLAMA2_CHAT, Sampling, patchscope, superscope

    patchscope(model, patches, sampling=Sampling(temperature=0.8, top_p=0.95, seed=3))
    superscope(model, prompts, layers=range(40), sampling=LLAMA2_CHAT)       # the paper's model's settings

A step of a sampled row: logits / temperature, then top-k (keep the k largest, ties
kept), then top-p (the smallest set of tokens whose cumulative probability is
>= top_p, at least one token: HF's convention), then a float32 softmax and one draw
from that row's own ``torch.Generator``, seeded from ``(seed, row_key(row))``
hashed with SHA-256 (:func:`row_seed`). So a row draws the same tokens whether it
runs alone, in a batch of 64, with ``exact=True`` or after a resume (in float32,
where batched logits equal one-at-a-time ones; in half precision only as far as
the logits agree, see :mod:`superscopes_nn.engine.chunks`). HF's own ``do_sample`` is not
used: it draws from the global RNG across the whole batch.

:class:`RowSampler` is the HF ``LogitsProcessor`` doing it: it returns scores that
are ``-inf`` except ``0`` at the drawn token, so generation stays greedy
(``do_sample=False``) and picks exactly the draw. It is a local Python object, so
sampled runs are local only (``remote=True`` / ``"local"`` are refused).
``Sampling.key`` goes into a run directory's config: resuming a greedy run as
sampled, or with another seed, is refused.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import LogitsProcessor

from .validate import is_np_bool, plain_value, check_int


def _check_real(value, what: str) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not is_np_bool(value)
    if not ok or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {plain_value(value)!r}")
    return float(value)


@dataclass(frozen=True)
class Sampling:
    """Sampled decoding settings: ``temperature`` > 0, ``top_p`` in (0, 1] or None,
    ``top_k`` >= 1 or None, ``seed`` an int (numpy scalars accepted)."""

    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self):
        t = _check_real(self.temperature, "sampling temperature")
        if t <= 0:
            raise ValueError(f"sampling temperature must be a finite number > 0, got {plain_value(self.temperature)!r}")
        object.__setattr__(self, "temperature", t)
        if self.top_p is not None:
            p = _check_real(self.top_p, "sampling top_p")
            if not 0 < p <= 1:
                raise ValueError(f"sampling top_p must be in (0, 1], got {plain_value(self.top_p)!r}")
            object.__setattr__(self, "top_p", p)
        if self.top_k is not None:
            object.__setattr__(self, "top_k", check_int(self.top_k, "sampling top_k", minimum=1))
        object.__setattr__(self, "seed", check_int(self.seed, "sampling seed"))

    @property
    def key(self) -> str:
        """A stable string naming these settings (run configs, file names' provenance)."""
        return f"sample(t={self.temperature!r},top_p={self.top_p!r},top_k={self.top_k!r},seed={self.seed})"


#: Llama-2-chat's ``generation_config.json`` (temperature 0.6, top_p 0.9): the sampling the
#: Superscopes paper's official code ran under (``model.generate`` on Llama-2-13b-chat).
LLAMA2_CHAT = Sampling(temperature=0.6, top_p=0.9)


def check_sampling(sampling, remote=False, backend=None) -> Sampling | None:
    """``None`` (greedy) or a :class:`Sampling`; sampled runs are local only (no remote, no backend)."""
    if sampling is None:
        return None
    if not isinstance(sampling, Sampling):
        raise ValueError(f"sampling must be None (greedy) or a superscopes_nn.core.sampling.Sampling, got {sampling!r}")
    if remote or backend is not None:
        where = f"remote={remote!r}" if remote else f"backend={type(backend).__name__}"
        raise ValueError(f"sampling runs locally only ({where}): its per-row generators cannot cross to NDIF "
                         "(no server-side seeding yet); use remote=False")
    return sampling


def with_sampler(gen_kwargs: dict | None, sampling: Sampling | None, rows: Sequence) -> dict | None:
    """``gen_kwargs`` plus a :class:`RowSampler` for exactly ``rows`` (in batch order); as is when greedy."""
    if sampling is None:
        return gen_kwargs
    from transformers import LogitsProcessorList

    from .store import row_key

    sampler = RowSampler(sampling, [row_key(r) for r in rows])
    return {**(gen_kwargs or {}), "logits_processor": LogitsProcessorList([sampler])}


def row_seed(seed: int, row_key: str) -> int:
    """The 63-bit seed of one row's generator: SHA-256 of ``seed`` and the row's key."""
    digest = hashlib.sha256(f"{int(seed)}\x00{row_key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def filter_scores(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """One row's ``[vocab]`` float32 scores after temperature, top-k and top-p (removed tokens ``-inf``)."""
    s = scores.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < s.numel():
        kth = torch.topk(s, sampling.top_k).values[-1]
        s = s.masked_fill(s < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        probs, order = torch.sort(torch.softmax(s, dim=-1), descending=True)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass ranked above each token
        drop = before >= sampling.top_p
        drop[0] = False
        s = s.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return s


class RowSampler(LogitsProcessor):
    """Draw each batch row's next token from its own generator (see the module docstring).

    ``row_keys``: one :func:`~superscopes_nn.core.store.row_key` per batch row, in batch order.
    Generators are (re)seeded on the first step of a ``generate`` call, on the scores' device.
    """

    def __init__(self, sampling: Sampling, row_keys: Sequence[str]):
        self.sampling = sampling
        self.seeds = [row_seed(sampling.seed, k) for k in row_keys]
        self._generators: list | None = None
        self._last_len = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise ValueError(f"RowSampler has {len(self.seeds)} rows, generate gave {scores.shape[0]}")
        if self._generators is None or self._last_len is None or input_ids.shape[1] <= self._last_len:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        self._last_len = input_ids.shape[1]
        out = torch.full_like(scores, float("-inf"))
        for b, g in enumerate(self._generators):
            probs = torch.softmax(filter_scores(scores[b], self.sampling), dim=-1)
            out[b, torch.multinomial(probs, 1, generator=g)] = 0.0
        return out
