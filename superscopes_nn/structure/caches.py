"""Reusing a prompt prefix's cache: which caches can be copied row by row, and the copy.

A sweep runs the target tokens before the first patched position once and gives every row
of the batch a copy of that batch-1 cache (:func:`expand_rows`). That needs two things,
both decided once, when the model loads (:func:`reuse_check`, recorded as
``ArchSpec.no_reuse`` and so in the model's :class:`~superscopes_nn.structure.info.ModelInfo`):

1. **the cache can be copied per row**: every cache layer is of a class in :data:`ROW_COPY`,
   whose tensors are known (key/value tensors of attention layers; convolution and
   recurrent states of state-space / linear-attention layers; nothing for a layer that
   caches nothing), inside a plain ``DynamicCache``. A cache of another class (a model's
   own cache, a quantized or static cache, a subclass with state of its own) is not copied;
2. **the cache reports how many tokens it holds** (generation reads it; a cache of state-space
   layers only cannot tell), and **the model continues a multi-token chunk from a cached state** as it would have
   computed it in one pass. Nothing is taken as exact by construction: a state-space mixer may
   restart its scan on a chunk longer than one token (Mamba's full-sequence path does), and an
   attention cache may continue a cut prompt differently from one uncut pass (a family found
   off by 6.1 in logits in plain HF). Every cache kind is therefore probed on a fixed 20-token prompt
   (:func:`probe_ids`) cut after 13 tokens: the first part cached and copied to two rows, the rest run
   on the copy, the last logits compared with one uncut pass at the dtype's tolerance. The probe
   costs three short forward passes at load (measured on CPU: 0.53 s on Gemma 3 270M, 0.32 s on SmolLM2-135M;
   0.14 s / 0.08 s before, when an attention-only cache was taken as exact unprobed).

Where either fails, the engine runs without prefix reuse (one printed notice per run);
results are the same, only slower.

>>> from superscopes_nn.structure.caches import reuse_check
>>> reuse_check(hf_model, ids)      # "" when a prefix cache can be reused, else the reason
>>> reuse_probe(hf_model).cache_fails   # True: a forward pass with a cache fails (the model cannot generate)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch


def _kv(layer, n: int) -> None:
    if getattr(layer, "keys", None) is not None and layer.keys.numel():
        layer.keys = layer.keys.repeat_interleave(n, dim=0)
        layer.values = layer.values.repeat_interleave(n, dim=0)


def _states(layer, n: int) -> None:
    for i in range(layer.number_of_states):
        if layer.is_conv_states_initialized[i]:
            layer.conv_states[i] = layer.conv_states[i].repeat_interleave(n, dim=0)
        if layer.is_recurrent_states_initialized[i]:
            layer.recurrent_states[i] = layer.recurrent_states[i].repeat_interleave(n, dim=0)


#: Cache layer class name (of ``transformers.cache_utils``) -> the functions copying its tensors to ``n``
#: rows (exact classes only: a subclass may keep state of its own that a copy would leave behind). Keyed
#: by name, not by class: :func:`expand_rows` travels to NDIF inside every request with prefix reuse,
#: and a class object in its globals would be pickled as a reference NDIF's allowlist refuses.
ROW_COPY: dict = {"DynamicLayer": (_kv,), "DynamicSlidingWindowLayer": (_kv,), "DummyLayer": (),
                  "LinearAttentionLayer": (_states,), "LinearAttentionAndFullAttentionLayer": (_kv, _states),
                  "LinearAttentionAndSlidingWindowAttentionLayer": (_kv, _states)}
#: Cache layer class names that hold a state besides attention keys/values (checked on load).
STATEFUL = tuple(k for k, fns in ROW_COPY.items() if _states in fns)
_MODULE = "transformers.cache_utils"


def _kind(layer) -> str | None:
    """The :data:`ROW_COPY` key of ``layer``'s exact class (None for any other class)."""
    cls = type(layer)
    return cls.__name__ if cls.__module__ == _MODULE and cls.__name__ in ROW_COPY else None


def _containers() -> tuple:
    from transformers.cache_utils import DynamicCache

    return (DynamicCache,)


def row_copy_reason(cache) -> str:
    """``""`` when :func:`expand_rows` can copy ``cache`` per row, else why not."""
    if cache is None:
        return "the model returns no cache from a forward pass"
    if type(cache) not in _containers():
        return f"its cache class {type(cache).__name__} is not one whose tensors are copied per row"
    odd = sorted({type(layer).__name__ for layer in cache.layers if _kind(layer) is None})
    if odd:
        return f"its cache layers ({', '.join(odd)}) are not ones whose tensors are copied per row"
    return ""


def expand_rows(cache, batch: int):
    """Copy a batch-1 cache to ``batch`` rows, in place (each layer by its class's copy)."""
    for layer in cache.layers:
        for fn in ROW_COPY[_kind(layer)]:
            fn(layer, batch)
    return cache


def _length_reason(cache, k: int) -> str:
    """Generation continues from a cache only if the cache says how many tokens it holds."""
    try:
        n = cache.get_seq_length()
    except Exception:  # noqa: BLE001  (a cache of state-space layers only cannot tell)
        n = None
    return "" if n == k else ("its cache does not report how many prompt tokens it holds (state layers only), "
                              "which generation needs to continue from it")


def _cache_of(out):
    for name in ("cache", "past_key_values"):
        try:
            value = getattr(out, name, None)
        except AttributeError:
            value = None
        if value is not None:
            return value
    return None


ENGINE_KWARG = "past_key_values"  # the keyword the engine's invoke passes a cache under (nnsight masks by it)
IGNORED = (f"its forward ignores a cache passed as `{ENGINE_KWARG}` (the keyword the engine's nnsight invoke "
           "passes; this family takes it as `cache` only), so a cut prompt would restart from nothing")


def _continue(hf_model, ids, cache, kwarg: str = ENGINE_KWARG):
    with warnings.catch_warnings():  # the probe's own keyword may be deprecated (5.24: use `cache`): not the user's
        warnings.simplefilter("ignore")
        return hf_model(ids, use_cache=True, **{kwarg: cache}).logits[:, -1].double()


def _gap(got, full) -> float:
    return float(((got - full).norm(dim=-1) / full.norm()).max())


#: How :func:`reuse_probe`'s reason starts where a forward pass with a cache fails (``Reuse.cache_fails``).
CACHE_FAILS = "a forward pass with a cache fails"


@dataclass(frozen=True)
class Reuse:
    """The reuse probe's decision: ``reason`` why a prefix cache is not reused (``""``: it is); ``cache_fails``:
    a forward pass with a cache fails, so the model cannot generate (generation needs that cache;
    :func:`superscopes_nn.engine.run.run_requests` refuses it before any run). Recorded as
    ``ArchSpec.no_reuse`` / ``ArchSpec.cache_fails``."""

    reason: str = ""
    cache_fails: bool = False


#: The probe prompt: :data:`PROBE_LEN` mid-vocabulary ids, cut after :data:`PROBE_CUT` (past a small
#: sliding window, so a window cache is probed across its edge).
PROBE_LEN, PROBE_CUT = 20, 13


def probe_ids(hf_model) -> torch.Tensor:
    """The fixed probe prompt [1, :data:`PROBE_LEN`] on the model's device (seeded, mid-vocabulary ids)."""
    vocab = hf_model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab // 8, max(vocab // 2, vocab // 8 + 1), (1, PROBE_LEN), generator=g)
    return ids.to(next(hf_model.parameters()).device)


def _tolerance(dtype) -> float:
    return max(1e-3, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


def reuse_check(hf_model, ids: torch.Tensor | None = None) -> str:
    """Why a prefix cache of ``hf_model`` cannot be reused (``""``: it can): :func:`reuse_probe`'s reason."""
    return reuse_probe(hf_model, ids).reason


def reuse_probe(hf_model, ids: torch.Tensor | None = None) -> Reuse:
    """The :class:`Reuse` decision for ``hf_model``, probed on ``ids`` [1, n]
    (default :func:`probe_ids`, cut after :data:`PROBE_CUT`; else cut at its middle).

    Every cache kind is probed, attention included: the cut prompt's first part cached and copied to two
    rows, the rest run on the copy, its last logits compared with one uncut pass at the dtype's tolerance.
    Cost: one forward of the whole prompt and two of its parts (0.53 s measured on Gemma 3 270M, CPU)."""
    ids = probe_ids(hf_model) if ids is None else ids
    k = PROBE_CUT if ids.shape[1] == PROBE_LEN else ids.shape[1] // 2
    tol = _tolerance(next(hf_model.parameters()).dtype)
    was_training = hf_model.training
    hf_model.eval()
    try:
        with torch.no_grad():
            try:
                cache = _cache_of(hf_model(ids[:, :k], use_cache=True))
            except Exception as err:  # noqa: BLE001  (a model whose own cache path fails)
                return Reuse(f"{CACHE_FAILS} ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})",
                             cache_fails=True)
            why = row_copy_reason(cache) or _length_reason(cache, k)
            if why:
                return Reuse(why)
            full = hf_model(ids, use_cache=False).logits[0, -1].double()
            stateful = any(_kind(layer) in STATEFUL for layer in cache.layers)
            expand_rows(cache, 2)
            try:
                err = _gap(_continue(hf_model, ids[:, k:].repeat(2, 1), cache), full)
            except Exception as e:  # noqa: BLE001
                return Reuse(f"continuing from a copied cache fails ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            if err <= tol:
                return Reuse()
            # the same cut continued from a fresh copy under `cache`: exact there means the keyword is dropped
            cache = expand_rows(_cache_of(hf_model(ids[:, :k], use_cache=True)), 2)
            try:
                renamed = _gap(_continue(hf_model, ids[:, k:].repeat(2, 1), cache, "cache"), full) <= tol
            except Exception:  # noqa: BLE001  (no such keyword: the model's own continuation differs, as said below)
                renamed = False
    finally:
        hf_model.train(was_training)
    if renamed:
        return Reuse(IGNORED)
    return Reuse("continuing from a cached prefix does not give the logits of one uncut pass (" +
                 ("its state-space / linear-attention layers restart their state on a multi-token chunk)" if stateful
                  else f"its attention cache continues a cut prompt differently; relative error {err:.2g})"))
