"""Plan a chunk of rows, and run a request's chunks in one nnsight session: tensors in, tensors out.

A chunk is at most ``max_batch_size`` :class:`~superscopes_nn.core.specs.Row` s whose target
prompts have the same token length (so a batch never needs padding): one batched ``generate``
(or ``trace`` for logits). :func:`plan_chunk` turns rows into a :class:`Chunk`;
:func:`run_chunks` runs a request's chunks (:func:`~superscopes_nn.engine.plan.plan_requests`)
in one ``model.session``, each of them as follows:

1. one ``trace`` per group of equal-length source prompts reads every source
   vector the chunk needs and that ``vectors`` (read by an earlier chunk, or by
   the source model's own session in a cross-model run) lacks;
2. each row's mapping is applied (:func:`apply_map`);
3. one batched ``generate`` (or ``trace`` for logits) on the target prompts
   writes all patches of the batch with one indexed assignment per (layer, site),
   on the prompt pass only. With ``prefix_len > 0`` the target tokens before the
   earliest patched position are run once and their KV cache is reused.

The session body sees only plain data (tuples, dicts, tensors, ints, strings) and
functions of this package shipped by source, so the same code runs with
``remote=False``, ``remote="local"`` or ``remote=True`` (NDIF). No pandas, disk
or retries here: :mod:`superscopes_nn.engine.run` does those.

Exactness, by dtype (``tests/test_patching.py``, ``tests/test_half_precision.py``):

- **float32**: batched rows give token ids equal to running each row alone and
  to a plain-HF forward-hook reference, on every CPU.
- **bfloat16 / float16**: a matmul's rounding depends on the batch shape (on
  GPUs and on CPUs with AMX or AVX-512 bf16 kernels), so batched results are not
  bit-stable. The guarantee: the patched prompt pass's logits are within
  :func:`logit_tolerance` of the one-at-a-time reference, and generated ids equal
  the reference's up to the first step where the reference's top-1/top-2 logit
  margin falls below that tolerance. ``exact=True`` (:mod:`superscopes_nn.engine.run`)
  runs each row alone without prefix reuse, which reproduces a one-at-a-time run
  bit for bit.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import nnsight
import torch

from ..structure.architectures import SITE_ORDER
from ..remote.capture import ship
from ..remote.errors import remote_host
from ..remote.safe_load import check_returned
from ..structure.sites import lm_head_output, read_sources, write_patches
from ..core.specs import Row
from ..structure.caches import expand_rows
from ..structure.info import plain_spec

#: Half-precision tolerance on logits, in units of the dtype's machine epsilon times
#: the largest |logit| of the step (see :func:`logit_tolerance`).
HALF_TOLERANCE_EPS = 8


def logit_tolerance(dtype: torch.dtype, logits: torch.Tensor) -> float:
    """The stated bound on |batched - one-at-a-time| for one step's logits.

    0 for float32 (batching is exact); ``HALF_TOLERANCE_EPS * eps(dtype) * max|logits|``
    for bfloat16 / float16 (bf16: 8 x 2^-7 = 6.25% of the largest logit).
    """
    if dtype not in (torch.bfloat16, torch.float16):
        return 0.0
    return HALF_TOLERANCE_EPS * torch.finfo(dtype).eps * float(logits.float().abs().max())


def chunk_indices(lengths: Sequence[int], max_batch_size: int):
    """Group items by token length (no padding), then split into batches; yields index lists."""
    by_len: dict = {}
    for i, n in enumerate(lengths):
        by_len.setdefault(n, []).append(i)
    for idx in by_len.values():
        for k in range(0, len(idx), max_batch_size):
            yield idx[k:k + max_batch_size]


@dataclass
class Chunk:
    """One chunk's plan (client side; :func:`run_chunks` sends it as :meth:`plain` data).

    ``spec``: the model's plain site spec (:func:`~superscopes_nn.structure.info.plain_spec`).
    ``source_groups``: groups of ``(ids [1, n], reads)`` with equal ``n``; ``reads`` are
    ``(key, layer, site, position)`` in forward order. ``target_ids``: [B, T] or None
    (a read-only chunk). ``writes``: ``(layer, site, rows, positions, row_indices)`` in
    forward order. ``maps``: per batch row ``(source_key, plain mapping)``.
    """

    spec: tuple
    source_groups: list = field(default_factory=list)
    target_ids: torch.Tensor | None = None
    writes: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    gen_kwargs: dict = field(default_factory=dict)
    logits: bool = False
    prefix_len: int = 0
    dtype: torch.dtype = torch.float32
    keep: dict = field(default_factory=dict)
    logit_positions: torch.Tensor | None = None
    prefix_keep: dict = field(default_factory=dict)

    def plain(self) -> dict:
        """The fields :func:`run_chunks` reads, as a plain dict (a dataclass does not cross to NDIF)."""
        return {"source_groups": self.source_groups, "target_ids": self.target_ids, "writes": self.writes,
                "maps": self.maps, "prefix_len": self.prefix_len, "gen_kwargs": dict(self.gen_kwargs),
                "keep": dict(self.keep), "logit_positions": self.logit_positions, "logits": self.logits,
                "prefix_keep": dict(self.prefix_keep)}


def shared_prefix_len(rows: Sequence[Row]) -> int:
    """Tokens common to every row's target before the earliest patched position."""
    first = rows[0].target_ids
    n = min(min(len(r.target_ids) for r in rows), min(r.target_position for r in rows))
    for r in rows[1:]:
        k = 0
        while k < n and r.target_ids[k] == first[k]:
            k += 1
        n = k
    return n


def _supports_logits_to_keep(model) -> bool:
    module = getattr(model, "_module", None)
    forward = getattr(module, "forward", None)
    return forward is not None and "logits_to_keep" in inspect.signature(forward).parameters


def source_groups(rows: Sequence[Row], known: Iterable = ()) -> list:
    """The reads of ``rows`` not in ``known``, grouped by source length, each in forward order."""
    known = set(known)
    by_prompt: dict = {}
    for r in rows:
        if r.source_key not in known:
            by_prompt.setdefault(r.source_ids, set()).add((r.source_key, r.source_layer, r.site, r.source_position))
    groups: dict = {}
    for ids, reads in by_prompt.items():
        ordered = sorted(reads, key=lambda k: (k[1], SITE_ORDER[k[2]], k[3]))
        groups.setdefault(len(ids), []).append((torch.tensor([ids]), ordered))
    return list(groups.values())


def plan_chunk(model, rows: Sequence[Row], *, gen_kwargs: dict | None = None, logits: bool = False,
               known: Iterable = (), shared_prefix: bool = False, read_here: bool = True,
               trim_logits: bool = True) -> Chunk:
    """Plan one chunk of ``model`` (the target) for ``rows``.

    ``known``: source keys already read (not read again); ``read_here=False``: the
    sources come from another model's session, so this chunk reads none. ``trim_logits``: the LM head
    runs on the positions from the first patched one on only (``logits_to_keep``); ``False`` (exact mode)
    runs it on every position, as a one-at-a-time forward does: on CPUs with fp16/bf16 matrix units
    (AVX512-FP16, AMX) the head's rounding depends on how many rows it multiplies.
    """
    spec = plain_spec(model)
    writes: dict = {}
    for b, r in enumerate(rows):
        writes.setdefault((r.target_layer, r.target_site), []).append((b, r.target_position))
    write_list = []
    for (layer, site), items in sorted(writes.items(), key=lambda kv: (kv[0][0], SITE_ORDER[kv[0][1]])):
        b_idx = [b for b, _ in items]
        write_list.append((layer, site, torch.tensor(b_idx), torch.tensor([p for _, p in items]), b_idx))
    target_ids = torch.tensor([list(r.target_ids) for r in rows])
    prefix = shared_prefix_len(rows) if shared_prefix else 0
    positions = torch.tensor([r.target_position for r in rows]) - prefix
    keep: dict = {}
    supports_keep = _supports_logits_to_keep(model)
    if logits and supports_keep and trim_logits:
        n_tokens = target_ids.shape[1] - prefix
        k = n_tokens - int(positions.min())
        keep, positions = {"logits_to_keep": k}, positions - (n_tokens - k)
    return Chunk(
        spec=spec, source_groups=source_groups(rows, known) if read_here else [],
        target_ids=target_ids, writes=write_list, maps=[(r.source_key, r.mapping.plain()) for r in rows],
        gen_kwargs=dict(gen_kwargs or {}), logits=logits, prefix_len=prefix, dtype=model._module.dtype,
        keep=keep, logit_positions=positions, prefix_keep={"logits_to_keep": 1} if supports_keep else {},
    )


def plan_reads(model, rows: Sequence[Row], known: Iterable = ()) -> Chunk:
    """A read-only chunk: the source vectors of ``rows`` on ``model`` (cross-model runs)."""
    return Chunk(spec=plain_spec(model), source_groups=source_groups(rows, known))


def apply_map(m: tuple, v: torch.Tensor, moved: dict | None = None) -> torch.Tensor:
    """``alpha * (W @ fn(v) + b)`` for a plain mapping ``(alpha, W, b, fn)``; parameters follow ``v``'s device.

    ``moved``: a per-chunk cache ``{(id(param), device): param on device}``, so a weight
    shared by the rows of a chunk crosses to a device once per chunk, not once per row.
    ``fn`` gets ``v`` as it is: tensors it closes over are its own to move (``v.device``).
    """
    alpha, weight, bias, fn = m
    if fn is not None:
        v = fn(v)
    if weight is not None:
        w = _on(weight, v.device, moved)
        v = v.to(w.dtype) @ w.T
        if bias is not None:
            v = v + _on(bias, v.device, moved)
    return v * alpha if alpha != 1.0 else v


def _on(param: torch.Tensor, device, moved: dict | None) -> torch.Tensor:
    """``param`` on ``device``, moved at most once per ``moved`` cache."""
    if param.device == device:
        return param
    if moved is None:
        return param.to(device)
    key = (id(param), str(device))
    if key not in moved:
        moved[key] = param.to(device)
    return moved[key]


def map_vectors(vectors: dict, maps: list, dtype: torch.dtype) -> tuple:
    """Apply each row's mapping to its source vector (in float32), on the vector's device.

    Returns ``(patched, ok)``: [d_target] tensors and a [B] bool tensor that is False
    where the mapped vector is not finite in ``dtype`` (fp16 overflows at 65504);
    such rows get a zero vector, so the batch still runs, and are reported by the caller.
    Mapping parameters cross to a vector's device once per chunk (:func:`apply_map`).
    """
    out, ok, moved = [], [], {}
    for key, m in maps:
        v = apply_map(m, vectors[key].float(), moved)
        good = bool(torch.isfinite(v.to(dtype)).all())
        out.append(v if good else torch.zeros_like(v))
        ok.append(good)
    return out, torch.tensor(ok)


def run_chunks(model, chunks, *, remote=False, backend=None, vectors: dict | None = None):
    """One session on ``model`` running one chunk or a list of chunks (one NDIF request either way).

    Each chunk reads the sources ``vectors`` (and the chunks before it) lack, then, unless it is
    read-only, maps them, patches them into its batched targets and generates.

    Returns ``(out, vectors)`` for one chunk and ``(outs, vectors)`` for a list. ``out`` is None
    for a read-only chunk, ``(ids [B, T + new], finite [B], mapped_ok [B])`` for generation
    (``finite``: the patched prompt pass gave finite logits; ``mapped_ok``: the mapped vector
    was finite in the model's dtype), or [B, vocab] logits at the target positions (NaN rows
    where ``mapped_ok`` is False). ``vectors``: every source vector used (key -> [d]).
    """
    single = isinstance(chunks, Chunk)
    chunks = [chunks] if single else list(chunks)
    ship(remote, backend)
    # Plain data only (builtins and tensors, no dataclass): this is all the session body (and NDIF) sees.
    spec, dtype = chunks[0].spec, chunks[0].dtype
    plain = [c.plain() for c in chunks]
    vectors, outs = dict(vectors or {}), []
    with model.session(remote=remote, backend=backend):
        for c in plain:
            ids, writes, maps, offset, lpos = c["target_ids"], c["writes"], c["maps"], c["prefix_len"], c["logit_positions"]
            for group in c["source_groups"]:
                with model.trace(use_cache=False) as tracer:  # a read needs no cache (some caches fail)
                    row0 = 0  # each invoke's first row in the combined batch (a flattened site needs it)
                    for src_ids, reads in group:
                        with tracer.invoke(src_ids):
                            read_sources(model, spec, reads, vectors, (row0, len(src_ids), src_ids.shape[1]))
                        row0 += len(src_ids)
            if ids is None:
                outs.append(None)
                continue
            patched, mapped_ok = map_vectors(vectors, maps, dtype)
            kw = {}
            if offset:
                with model.trace(ids[:1, :offset], use_cache=True, **c["prefix_keep"]):  # the probe's setting
                    cache = model.output.past_key_values
                kw["past_key_values"] = expand_rows(cache, len(ids))  # only models whose ModelInfo.no_reuse is empty
            if c["logits"]:
                with model.trace(use_cache=bool(offset), **c["keep"]) as tracer:  # a cache only to continue one
                    with tracer.invoke(ids[:, offset:], **kw):  # the cache goes with the invoke (nnsight's mask)
                        write_patches(model, spec, writes, patched, offset, (len(ids), ids.shape[1] - offset))
                        full = model.output.logits  # index tensors built on its device
                        logits = full[torch.arange(len(lpos), device=full.device), lpos.to(full.device)]
                logits[~mapped_ok.to(logits.device)] = float("nan")
                outs.append(logits)
            else:
                gen_kwargs = {**c["gen_kwargs"], **kw}
                with model.generate(**gen_kwargs) as tracer:
                    with tracer.invoke(ids):
                        write_patches(model, spec, writes, patched, offset, (len(ids), ids.shape[1] - offset))
                        finite = torch.isfinite(lm_head_output(model, spec)).flatten(1).all(1)
                        result = tracer.result
                outs.append((result, finite, mapped_ok))
        nnsight.save(outs)
        vectors.save()
    host = getattr(backend, "host", None) or remote_host(remote)
    if host:  # what a host sent back is data (remote.safe_load); here it must also be laid out as asked
        check_returned(outs, returned(chunks), host, "its outs")
        check_returned(vectors, {k: torch.empty(0, device="meta") for k in vectors} if type(vectors) is dict
                       else {}, host, "its vectors")
    return (outs[0] if single else outs), vectors


def returned(chunks: list) -> list:
    """What :func:`run_chunks` returns for ``chunks`` as meta tensors (a 0 dimension: any length): per chunk
    ``None`` (read-only), ``(ids [B, T + new], finite [B], mapped_ok [B])`` or logits ``[B, vocab]``."""
    out: list = []
    for c in chunks:
        if c.target_ids is None:
            out.append(None)
        elif c.logits:
            out.append(torch.empty(len(c.logit_positions), 0, device="meta"))
        else:
            b, t = c.target_ids.shape
            new = int(c.gen_kwargs.get("max_new_tokens", 0))
            flags = torch.empty(b, dtype=torch.bool, device="meta")
            out.append((torch.empty(b, t + new, dtype=torch.long, device="meta"), flags, flags))
    return out


def result_bytes(chunk: Chunk, vocab: int, hidden: int) -> int:
    """An upper estimate of what ``chunk`` sends back: ids (or logits) and the vectors it reads."""
    reads = sum(len(r) for g in chunk.source_groups for _, r in g)
    out = 0
    if chunk.target_ids is not None:
        b, t = chunk.target_ids.shape
        out = b * vocab * 4 if chunk.logits else b * (t + int(chunk.gen_kwargs.get("max_new_tokens", 0))) * 8 + 2 * b
    return out + reads * hidden * 4
