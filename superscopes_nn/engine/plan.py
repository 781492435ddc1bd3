"""A remote run's plan, measured before anything is sent: requests, bytes each way, NDIF's limits.

:func:`plan` groups rows exactly as :func:`~superscopes_nn.engine.run.run_requests` will (same chunks,
same requests), serializes every request with :class:`~superscopes_nn.remote.capture.CaptureBackend`
(the bytes nnsight would POST, not an estimate) and sizes every result from its tensors' shapes::

    >>> p = plan(model, sweep_rows(model, prompts, layers=range(61), sites="mlp_out", alphas=MLP_ALPHAS))
    >>> print(p.line())
    plan: deepseek-ai/DeepSeek-V3, 2016 rows in 32 chunks -> 4 NDIF requests (512 rows each); sent 0.51 MiB ...
    >>> p.check()            # ValueError naming the number and the knob, if a limit would break

Every limit is a :class:`Limit` citing where NDIF (ndif 0.1.2's sdist) documents the number;
``superscopes plan`` prints the same plan from the command line (:mod:`superscopes_nn.output.plan_cli`).
A remote run (``remote=True`` or a host) computes its plan, prints :meth:`Plan.line` and refuses
before the first request when :meth:`Plan.problems` is not empty (:func:`announce`), then logs one line
per request. Runs that are not rows (``generate_plain``, ``collect``, ``lens_logits``) describe each
request as a :class:`CustomRequest` (how to open it on a backend, what it returns); :func:`measure_custom_requests`
plans them the same way and :func:`~superscopes_nn.engine.run.run_custom_requests` sends them.
"""

from __future__ import annotations

import io
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..core.options import RunOptions
from ..core.sampling import with_sampler
from ..core.validate import check_batch_size, check_int, check_max_new_tokens
from ..remote.capture import CaptureBackend, RequestCaptured
from ..structure.info import logits_width, model_info, model_name
from .chunks import Chunk, chunk_indices, plan_chunk, plan_reads, result_bytes, run_chunks

__all__ = ["Batching", "Limit", "LIMITS", "Request", "RequestPlan", "Plan", "CustomRequest", "announce", "batching",
           "measure_custom_requests", "plan", "plan_requests", "REQUEST_RESULT_BYTES"]

MiB = 2 ** 20
#: The library sizes each request's result under this (estimated by :func:`~superscopes_nn.engine.chunks.result_bytes`).
REQUEST_RESULT_BYTES = 6 * MiB


@dataclass(frozen=True)
class Limit:
    """One bound a request must stay under: ``value`` bytes, where NDIF says so, and the knobs that lower it."""

    name: str
    value: int
    source: str
    knob: str


#: NDIF's documented bounds (ndif 0.1.2 sdist; ``pip download --no-deps --no-binary :all: ndif==0.1.2``).
LIMITS = {
    "result": Limit(
        "result bytes per request", 8 * MiB,
        "NDIF's inline result cap on stock Redis, STOCK_PUBSUB_SOFT_LIMIT_BYTES = 8 MiB in "
        "src/ndif/common/providers/redis.py (docs/concepts/status-and-results.md, 'Inline cap'); larger results "
        "and non-blocking jobs go through the object store",
        "lower max_batch_size, chunks_per_request or max_new_tokens"),
    "request": Limit(
        "request bytes", 256 * MiB,
        "NDIF enforces no request size (docs/concepts/auth-and-limits.md, 'Request size': the body is held in an API "
        "worker's memory and in Redis) but bounds the HTTP handler by NDIF_API_TIMEOUT = 120 s (same page, 'Every "
        "limit in one table'); this library caps a POST at 256 MiB (120 s at ~2 MiB/s)",
        "lower max_batch_size or chunks_per_request (a cross-model request carries its source vectors; an Affine "
        "mapping carries its d x d weight)"),
}


@dataclass(frozen=True)
class RequestPlan:
    """One NDIF request: ``rows`` in ``chunks`` batched passes; ``sent`` bytes (serialized by capture) and
    ``result`` bytes (the ``torch.save`` of what it returns, at most)."""

    rows: int
    chunks: int
    sent: int
    result: int
    row_indices: tuple = ()
    """The indices of the rows it runs, in batch order (empty for a run that is not rows)."""


@dataclass(frozen=True)
class Plan:
    model: str
    rows: int
    chunk_count: int
    requests: tuple
    chunks_per_request: int
    max_batch_size: int
    knob: str = ""  # what to change, for runs whose knobs are not max_batch_size / chunks_per_request

    def problems(self) -> list[str]:
        """One line per broken limit: the request, the number, the limit, where NDIF documents it, the knob."""
        out = []
        for i, r in enumerate(self.requests, 1):
            for key, got in (("result", r.result), ("request", r.sent)):
                lim = LIMITS[key]
                knob = self.knob or (f"{lim.knob} (now max_batch_size={self.max_batch_size}, "
                                     f"chunks_per_request={self.chunks_per_request})")
                if got > lim.value:
                    out.append(f"NDIF request {i} of {len(self.requests)} ({r.rows} rows) has {_mib(got)} of "
                               f"{lim.name}, over {_mib(lim.value)} ({lim.source}): {knob}")
        return out

    def check(self) -> "Plan":
        """``self``, or a ValueError naming the first broken limit (nothing has been sent)."""
        bad = self.problems()
        if bad:
            raise ValueError(f"refused before the first request: {bad[0]}"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        return self

    def line(self) -> str:
        sent, res = [r.sent for r in self.requests], [r.result for r in self.requests]
        rows = sorted({r.rows for r in self.requests})
        per = f"{rows[0]} rows each" if len(rows) == 1 else f"{rows[0]}-{rows[-1]} rows each"
        ok = "within NDIF's limits" if not self.problems() else f"{len(self.problems())} over a limit"
        return (f"plan: {self.model}, {self.rows} rows in {self.chunk_count} chunks -> {len(self.requests)} NDIF "
                f"request{'s' if len(self.requests) != 1 else ''} ({per}); sent {_mib(max(sent))} max "
                f"({_mib(sum(sent))} total), results {_mib(max(res))} max ({_mib(sum(res))} total); {ok} "
                f"(result <= {_mib(LIMITS['result'].value)}, request <= {_mib(LIMITS['request'].value)})")

    def table(self) -> str:
        lines = [self.line(), "request  rows  chunks  sent_bytes  result_bytes"]
        lines += [f"{i:7d}  {r.rows:4d}  {r.chunks:6d}  {r.sent:10d}  {r.result:12d}"
                  for i, r in enumerate(self.requests, 1)]
        return "\n".join(lines + self.problems())


def _mib(n: int) -> str:
    return f"{n / MiB:.2f} MiB" if n >= 0.01 * MiB else f"{n / 1024:.1f} KiB"


def vocab_size(model) -> int:
    """How many logits ``model`` gives (its LM head's output width; the config's ``vocab_size`` where the head
    does not say), as :func:`~superscopes_nn.structure.info.logits_width` reads it."""
    return logits_width(model._module, model_info(model).spec)


@dataclass(frozen=True)
class Batching:
    """How a run cuts its rows, decided once by :func:`batching` for execution and plan alike: rows per
    chunk, prefix reuse, chunks per request, ``no_reuse`` (why the model runs without prefix reuse although
    asked, or ""), ``trim_logits`` (the LM head on the patched positions only; False in exact mode)."""

    max_batch_size: int
    shared_prefix: bool
    chunks_per_request: int
    no_reuse: str = ""
    trim_logits: bool = True


def batching(target_model, options: RunOptions) -> Batching:
    """The one place a run's batching defaults are decided: ``options.exact`` means one row per chunk and
    no prefix reuse; a model whose ``ModelInfo.no_reuse`` names a reason runs without prefix reuse;
    ``chunks_per_request`` defaults to 8 for a remote run (``options.remote`` set) and 1 locally (so
    progress and the run store advance per chunk); exact: logits on every position, as one row alone."""
    max_batch_size, shared_prefix = options.max_batch_size, options.shared_prefix
    check_batch_size(max_batch_size)
    if options.exact or model_info(target_model).spec.no_batch:  # no_batch: rows one at a time (structure.steps)
        max_batch_size, shared_prefix = 1, shared_prefix and not options.exact
    why = model_info(target_model).no_reuse if shared_prefix else ""
    per = options.chunks_per_request
    per = check_int(per, "chunks_per_request", minimum=1) if per is not None else (8 if options.remote else 1)
    return Batching(int(max_batch_size), bool(shared_prefix) and not why, int(per), why or "", not options.exact)


@dataclass(frozen=True)
class Request:
    """One request: one nnsight session (one NDIF request on a remote run).

    ``chunks``: its planned chunks, in order, and ``indices``: each chunk's row indices; ``reads``: in
    a cross-model run, the source model's read-only chunk for the sources of these rows that no earlier
    request read (None: one model, or nothing new to read); ``given``: the source keys the target
    session receives (read by an earlier request, or by ``reads``), so it reads only the others."""

    chunks: tuple
    indices: tuple
    reads: Chunk | None = None
    given: tuple = ()

    @property
    def row_indices(self) -> list:
        """The indices of the rows it runs, in batch order."""
        return [i for idx in self.indices for i in idx]


def plan_requests(model, rows: list, *, batching: Batching, target_model=None, gen_kwargs=None,
                  logits: bool = False, sampling=None) -> list[Request]:
    """The request loop, written once: every chunk of ``rows`` planned up front (a source is read by the
    first chunk that needs it), grouped into requests of at most ``batching.chunks_per_request`` chunks
    whose estimated result stays under :data:`REQUEST_RESULT_BYTES`, each with the source reads and
    vectors it needs. :func:`~superscopes_nn.engine.run.run_requests` runs it, :func:`measure_requests` measures it."""
    target_model = model if target_model is None else target_model
    two = target_model is not model
    vocab, d = vocab_size(target_model), model_info(target_model).hidden
    grouped, size, seen = [], 0, set()
    for idx in chunk_indices([len(r.target_ids) for r in rows], batching.max_batch_size):
        part = [rows[i] for i in idx]
        chunk = plan_chunk(target_model, part, gen_kwargs=with_sampler(gen_kwargs, sampling, part), logits=logits,
                           known=seen, shared_prefix=batching.shared_prefix, read_here=not two,
                           trim_logits=batching.trim_logits)
        seen |= {r.source_key for r in part}
        n = result_bytes(chunk, vocab, d)
        if grouped and len(grouped[-1]) < batching.chunks_per_request and size + n <= REQUEST_RESULT_BYTES:
            grouped[-1].append((idx, chunk))
            size += n
        else:
            grouped.append([(idx, chunk)])
            size = n
    out, known = [], set()
    for request in grouped:
        req_rows = [rows[i] for idx, _ in request for i in idx]
        keys = list(dict.fromkeys(r.source_key for r in req_rows))
        reads = plan_reads(model, req_rows, known) if two else None
        reads = reads if reads is not None and reads.source_groups else None
        given = tuple(keys if two else [k for k in keys if k in known])
        known.update(keys)
        out.append(Request(chunks=tuple(c for _, c in request), indices=tuple(tuple(i) for i, _ in request),
                           reads=reads, given=given))
    return out


def greedy_kwargs(target_model, max_new_tokens: int) -> dict:
    """Greedy decoding settings (HF sampling switched off explicitly; the cache on, where a config turns it off
    (MPT): the prompt pass's patch then stays in the cache every later step reads), as every run sends them."""
    check_max_new_tokens(max_new_tokens)
    return dict(max_new_tokens=int(max_new_tokens), do_sample=False, pad_token_id=target_model.tokenizer.pad_token_id,
                top_p=None, top_k=None, temperature=None, use_cache=True)


def _vector(model) -> torch.Tensor:
    return torch.empty(model_info(model).hidden, dtype=model._module.dtype, device="meta")


def _captured(model, chunks, vectors: dict) -> int:
    return _capture(lambda backend: run_chunks(model, chunks, backend=backend, vectors=vectors))


def _capture(open_session: Callable) -> int:
    """The bytes of the request ``open_session(backend)`` sends, serialized by a :class:`CaptureBackend`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "request.bin"
        try:
            open_session(CaptureBackend(path))
        except RequestCaptured:
            return path.stat().st_size
    raise RuntimeError("the session was not captured")  # pragma: no cover


def _real(vectors: dict) -> dict:
    """Meta placeholders as zero tensors (what the request would carry)."""
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in vectors.items()}


def _result_bytes(chunks: list, vectors: dict, vocab: int) -> int:
    """``torch.save`` of what the session saves: its outputs and every vector, shaped as at most returned
    (meta tensors give the container overhead, plus each tensor's bytes)."""
    outs = []
    for chunk in chunks:
        if chunk.target_ids is None:
            outs.append(None)
            continue
        b, t = chunk.target_ids.shape
        if chunk.logits:
            parts = [torch.empty(b, vocab, dtype=torch.float32, device="meta")]
        else:
            new = int(chunk.gen_kwargs.get("max_new_tokens", 0))
            parts = [torch.empty(b, t + new, dtype=torch.long, device="meta"),
                     torch.empty(b, dtype=torch.bool, device="meta"), torch.empty(b, dtype=torch.bool, device="meta")]
        outs.append(parts[0] if chunk.logits else tuple(parts))
    return saved_bytes([outs, dict(vectors)])


def _tensors(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [t for o in items for t in _tensors(o)]


def saved_bytes(obj) -> int:
    """The ``torch.save`` size of ``obj`` (lists, tuples, dicts of tensors), its tensors given as meta tensors
    of the returned shapes and dtypes: the container's bytes, plus each tensor's bytes and zip record."""
    tensors = _tensors(obj)
    return _saved(obj) + sum(t.numel() * t.element_size() for t in tensors) + len(tensors) * _storage_overhead()


def _saved(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return len(buf.getvalue())


_OVERHEAD: list = []


def _storage_overhead() -> int:
    """What one more stored tensor adds to a ``torch.save`` besides its bytes, at most: its zip record (measured
    once), up to 63 bytes of padding (each record's data is aligned to 64 bytes, so the padding depends on where
    it falls) and a few bytes for its name past the tenth tensor (``archive/data/10``...)."""
    if not _OVERHEAD:
        real = _saved([torch.zeros(1, dtype=torch.uint8) for _ in range(8)])
        meta = _saved([torch.empty(1, dtype=torch.uint8, device="meta") for _ in range(8)])
        _OVERHEAD.append(max(0, (real - meta - 8) // 8) + 64 + 8)
    return _OVERHEAD[0]


def _reads(chunks: list) -> set:
    return {key for chunk in chunks for group in chunk.source_groups for _, reads in group for key, *_ in reads}


def plan(model, rows, options: RunOptions | None = None, *, target_model=None, logits: bool = False,
         gen_kwargs: dict | None = None, **settings) -> Plan:
    """The :class:`Plan` of running ``rows`` remotely with ``options`` (as :func:`~superscopes_nn.engine.run.run_rows`
    takes them; ``settings``: :class:`~superscopes_nn.core.options.RunOptions` fields replaced): the requests
    :func:`plan_requests` makes for a remote run (``remote=True`` unless the options name a host), measured
    by :func:`measure_requests`."""
    opts = RunOptions.of(options, **settings).with_defaults()
    opts = opts if opts.remote else opts.replace(remote=True)
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to plan")
    target_model = model if target_model is None else target_model
    cut = batching(target_model, opts)
    if gen_kwargs is None and not logits:
        gen_kwargs = greedy_kwargs(target_model, opts.max_new_tokens)
    planned = plan_requests(model, rows, batching=cut, target_model=target_model, gen_kwargs=gen_kwargs,
                            logits=logits, sampling=opts.sampling)
    return measure_requests(model, rows, planned, target_model=target_model, batching=cut)


def measure_requests(model, rows: list, planned: list, *, batching: Batching, target_model=None) -> Plan:
    """Capture every request of ``planned`` (from :func:`plan_requests`) and size its result."""
    target_model = model if target_model is None else target_model
    vocab = vocab_size(target_model)
    known: dict = {}
    out = []
    for request in planned:
        sent = result = 0
        if request.reads is not None:
            sent += _captured(model, request.reads, {})
            got = {k: _vector(model) for k in _reads([request.reads])}
            result += _result_bytes([request.reads], got, vocab)
            known.update(got)
        chunks = list(request.chunks)
        given = {k: known[k] for k in request.given}
        sent += _captured(target_model, chunks, _real(given))
        used = {**given, **{k: _vector(target_model) for k in _reads(chunks)}}
        result += _result_bytes(chunks, used, vocab)
        known.update(used)
        out.append(RequestPlan(rows=len(request.row_indices), chunks=len(request.chunks), sent=sent, result=result,
                               row_indices=tuple(request.row_indices)))
    return Plan(model=model_name(target_model), rows=len(rows), chunk_count=sum(len(r.chunks) for r in planned),
                requests=tuple(out), chunks_per_request=batching.chunks_per_request,
                max_batch_size=batching.max_batch_size)


@dataclass(frozen=True)
class CustomRequest:
    """One request of a run that is not rows: ``open(backend)`` runs the session on ``backend`` and returns
    what it saves; ``returns`` is that, as meta tensors of the returned shapes; ``rows`` the prompts it covers."""

    open: Callable
    returns: object
    rows: int = 1


def measure_custom_requests(model, requests: list, knob: str, max_batch_size: int = 1) -> Plan:
    """The :class:`Plan` of sending ``sessions`` (one request each): sent bytes by capture, result bytes
    from ``returns``; ``knob`` names what lowers them."""
    out = tuple(RequestPlan(rows=s.rows, chunks=1, sent=_capture(s.open), result=saved_bytes(s.returns))
                for s in requests)
    return Plan(model=model_name(model), rows=sum(s.rows for s in requests), chunk_count=len(out), requests=out,
                chunks_per_request=1, max_batch_size=int(max_batch_size), knob=knob)


def log(msg: str) -> None:
    print(f"[superscopes] {msg}", file=sys.stderr, flush=True)


def announce(model, remote, measured: Callable) -> None:
    """Before the first request of an NDIF run (``remote=True`` or a host): the preflight (once per host and
    model), then ``measured()`` (a :class:`Plan`) refused if over a limit, else its line printed."""
    from ..remote.errors import remote_host
    from ..remote.preflight import preflight_once

    preflight_once(model, remote_host(remote))
    log(measured().check().line())


def log_request(n: int, total: int, rows: int) -> None:
    """The progress line of NDIF request ``n`` of ``total``."""
    log(f"NDIF request {n}/{total}: {rows} rows")
