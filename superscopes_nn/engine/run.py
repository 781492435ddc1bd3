"""The orchestrator: the request list run in order, with result records, the run store, NDIF retries and progress.

Every patched row goes through :func:`run_requests` (the requests of
:func:`~superscopes_nn.engine.plan.plan_requests`, each one session), and :func:`run_rows` adds the
result records and the run store; settings come as one :class:`~superscopes_nn.core.options.RunOptions`::

    rows = sweep_rows(model, "Pink Floyd", layers=range(9), alphas=[1, 6])
    df = run_rows(model, rows, RunOptions(max_new_tokens=10))     # in memory
    df = run_rows(model, rows, run_dir="runs/pf")                 # a field as a keyword: every finished chunk on disk
    df = run_rows(model, rows, run_dir="runs/pf", resume=True)    # skip what is there

:mod:`superscopes_nn.engine.api` wraps it (``patchscope``, ``sweep``; ``patched_logits`` runs
:func:`run_requests` for logits); runs that are not rows (``generate_plain``, ``collect``, the lens)
go through :func:`run_custom_requests`. With a remote target (``remote=True`` or a host)
every session is one :func:`~superscopes_nn.remote.errors.call_remote`: transient NDIF
failures are retried, others raise :class:`~superscopes_nn.remote.errors.NDIFError`,
with or without a run directory.

``sampling=Sampling(...)`` (:mod:`superscopes_nn.core.sampling`) samples instead of greedy
decoding, per row and independent of batching (local runs only).

``exact=True`` runs each row alone with no prefix reuse: in bf16/fp16 the results then
equal a one-at-a-time run bit for bit (batched half precision is only within
:func:`~superscopes_nn.engine.chunks.logit_tolerance`; float32 is exact either way).
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Callable, Sequence

import pandas as pd

from .plan import announce, batching, greedy_kwargs, log_request, measure_requests, measure_custom_requests, plan_requests
from .chunks import run_chunks
from .rows import check_map_width
from .recording import RecordingBackend, active, stand_in, stand_in_outs

from ..core.options import RunOptions
from ..core.quiet import quieted
from ..core.sampling import Sampling, check_sampling
from ..core.specs import Row
from ..core.store import RunStore, frame, row_key
from ..core.validate import check_batch_size, check_max_new_tokens, check_remote
from ..remote.capture import ship
from ..remote.errors import remote_host
from ..remote.safe_load import check_returned
from ..structure.hub import canonical_id
from ..structure.info import eos_ids, model_info, model_name


def trim_new_tokens(ids: Sequence[int], eos: set) -> list[int]:
    """New token ids up to (not including) the first end-of-sequence token."""
    out = []
    for t in ids:
        if int(t) in eos:
            break
        out.append(int(t))
    return out


def row_record(r: Row, new_ids: list[int], tokenizer, src_name: str, tgt_name: str, error: str | None = None) -> dict:
    """The result record of one row (:data:`~superscopes_nn.core.specs.RESULT_COLUMNS` plus the row's extras)."""
    return {
        "source_prompt": r.source_prompt, "source_position": r.source_position, "source_token": r.source_token,
        "source_layer": r.source_layer, "site": r.site, "target_prompt": r.target_prompt,
        "target_position": r.target_position, "target_layer": r.target_layer, "target_site": r.target_site,
        "mapping": r.mapping.name, "mapping_key": r.mapping.key, "alpha": float(r.mapping.alpha),
        "model": src_name, "target_model": tgt_name,
        "interpretation": None if error else tokenizer.decode(new_ids, skip_special_tokens=True),
        "token_ids": [] if error else new_ids, "error": error, **r.extra,
    }


def remote_caller(remote, backend, model, retries: int = 3, backoff: float = 1.0, sleep=None) -> Callable:
    """``call(fn)``: ``fn()`` directly for local runs, through NDIF retries (``retries``, ``backoff``,
    ``sleep``: :class:`~superscopes_nn.core.options.RunOptions`' fields) for remote ones."""
    from ..remote.errors import call_remote
    from ..remote.hosts import check_host

    host = remote_host(remote)
    if host is not None and active() is not None:  # recorded, never sent: no hub lookup, no retries
        return lambda fn: fn()
    if host is None and backend is not None and getattr(backend, "host", None):
        host = backend.host
    if host is None:
        return lambda fn: fn()
    check_host(host, getattr(backend, "allow_insecure_http", False))  # plain http: before anything is sent
    if backend is None:  # the hub lookup of the id NDIF is sent: once, quickly, outside NDIF's retries
        canonical_id(getattr(model, "repo_id", None) or "", host, name=model_name(model))
    kw = {} if sleep is None else {"sleep": sleep}
    retrying = functools.partial(call_remote, retries=retries, backoff=backoff, host=host, model=model_name(model), **kw)
    return functools.partial(_named_model_key, retrying, model_name(model), host)


def _named_model_key(call: Callable, name: str, host: str, fn: Callable):
    """``call(fn)``; a model with no hub id (a local path, an in-memory model) is one line naming the host."""
    from huggingface_hub.errors import HFValidationError

    try:
        return call(fn)
    except HFValidationError as err:
        raise ValueError(f"cannot run {name!r} on {host}: a remote run sends the model's hub id, and {name!r} has "
                         f"none NDIF can look up (a local path or an in-memory model): {str(err).splitlines()[0]}"
                         ) from None


def session_backend(model, remote, backend):
    """The backend one session of ``model`` uses: the caller's; else, for NDIF (``remote=True`` or a
    host), a fresh :class:`~superscopes_nn.remote.backend.NDIFBackend` (submit once, then wait on the
    same job id, so a dropped connection never runs the job twice); else None (local, "local")."""
    if backend is not None or not check_remote(remote).is_ndif:
        return backend
    if active() is not None:  # a session of its own while recording (engine.recording)
        return RecordingBackend(model, active())
    from ..remote.backend import remote_backend

    return remote_backend(model, remote)


def run_requests(model, rows: list[Row], options: RunOptions | None = None, *, target_model=None,
                 gen_kwargs: dict | None = None, logits: bool = False, call=None, **settings):
    """Yield ``(row indices, chunk, out)`` for every chunk of ``rows`` (see :mod:`superscopes_nn.engine.chunks`),
    running the requests of :func:`~superscopes_nn.engine.plan.plan_requests` in order.

    A source vector is read once per sweep: chunks reuse what earlier chunks read. In a
    cross-model run the source model reads in its own session first. ``call(fn)`` wraps
    every session (NDIF retries); default: :func:`remote_caller`. ``options`` (``settings``: its fields
    replaced): the batching (``max_batch_size``, ``shared_prefix``, ``exact``, ``chunks_per_request``) is
    decided by :func:`~superscopes_nn.engine.plan.batching`; ``remote`` / ``backend`` say where sessions run;
    ``sampling``: each chunk's generate gets a sampler for exactly its rows, in batch order.
    """
    opts = RunOptions.of(options, **settings)
    remote, backend = opts.remote, opts.backend
    target_model = model if target_model is None else target_model
    cut = batching(target_model, opts)
    info = model_info(target_model)
    if not logits and info.cache_fails:  # generation runs on that cache: refused before any run
        raise ValueError(f"{model_name(target_model)} cannot generate here: {info.no_reuse}; patched_logits, collect "
                         "and the logit lens run without a cache")
    if cut.no_reuse:  # decided when the model loaded; one notice per run
        print(f"[superscopes] {model_name(target_model)}: running without prefix reuse: {cut.no_reuse}",
              file=sys.stderr)
    d_src, d_tgt = model_info(model).hidden, model_info(target_model).hidden
    for m in {id(r.mapping): r.mapping for r in rows}.values():  # rows resolved for another model: before any run
        check_map_width(m, d_src, d_tgt, model_name(model), model_name(target_model))
    call = quieted(call or remote_caller(remote, backend, target_model))  # no deprecation noise per generate
    planned = plan_requests(model, rows, batching=cut, target_model=target_model, gen_kwargs=gen_kwargs,
                            logits=logits, sampling=opts.sampling)
    ndif = opts.ndif
    if ndif and active() is not None:  # recorded: the same request list measured, stand-ins returned
        active().add(measure_requests(model, rows, planned, target_model=target_model, batching=cut))
        for request in planned:
            for idx, chunk in zip(request.indices, request.chunks):
                yield list(idx), chunk, stand_in_outs(target_model, chunk)
        return
    if ndif:  # served and same nnsight, then measured, before the first request; a broken limit is refused here
        announce(target_model, remote, lambda: measure_requests(model, rows, planned, target_model=target_model, batching=cut))
    known: dict = {}
    for n, request in enumerate(planned, 1):
        if ndif:
            log_request(n, len(planned), len(request.row_indices))
        if request.reads is not None:
            _, got = call(lambda: run_chunks(model, request.reads, remote=remote,
                                              backend=session_backend(model, remote, backend)))
            known.update(got)
        given = {k: known[k] for k in request.given}
        outs, used = call(lambda: run_chunks(target_model, list(request.chunks), remote=remote, vectors=given,
                                              backend=session_backend(target_model, remote, backend)))
        known.update(used)
        for idx, chunk, out in zip(request.indices, request.chunks, outs):
            yield list(idx), chunk, out


def run_custom_requests(model, requests: list, *, remote=False, backend=None, knob: str = "", max_batch_size: int = 1,
                 call=None) -> list:
    """What each :class:`~superscopes_nn.engine.plan.CustomRequest` returns, in order, one session (one NDIF
    request) each: the path of runs that are not rows (``generate_plain``, ``collect``, ``lens_logits``).
    On NDIF (``remote=True`` or a host), as :func:`run_requests`: the preflight, the plan line (refused before
    the first request over a limit, naming ``knob``) and one progress line per request."""
    call = quieted(call or remote_caller(remote, backend, model))
    ship(remote, backend)
    ndif = check_remote(remote).is_ndif
    if ndif and active() is not None:  # recorded: measured as planned, stand-ins of the returned shapes
        active().add(measure_custom_requests(model, requests, knob, max_batch_size))
        return [stand_in(s.returns) for s in requests]
    if ndif:
        announce(model, remote, lambda: measure_custom_requests(model, requests, knob, max_batch_size))
    host = remote_host(remote) or getattr(backend, "host", None)
    out = []
    for n, s in enumerate(requests, 1):
        if ndif:
            log_request(n, len(requests), s.rows)
        out.append(call(lambda s=s: s.open(session_backend(model, remote, backend))))
        if host:  # decoded as data (remote.safe_load); laid out as the session returns, too
            check_returned(out[-1], s.returns, host, "its result")
    return out


def _row_error(mapped_ok: bool, finite: bool, dtype) -> str | None:
    if not mapped_ok:
        return f"non-finite values after amplification (in {dtype})"
    if not finite:
        return "non-finite logits after patching"
    return None


def run_config(model, target_model, max_new_tokens: int, config: dict | None,
               sampling: Sampling | None = None) -> dict:
    """The one ``config.json`` schema: what produced the rows, then the caller's own settings.

    A sampled run adds ``"sampling": Sampling.key``; no such key means greedy (so greedy
    run directories from before sampling existed still resume, and greedy never mixes with sampled).
    """
    drawn = {} if sampling is None else {"sampling": sampling.key}
    return {"model": model_name(model), "target_model": model_name(target_model or model),
            "max_new_tokens": int(max_new_tokens), **drawn, **(config or {})}


def run_rows(model, rows: list[Row], options: RunOptions | None = None, *, target_model=None,
             on_chunk: Callable | None = None, **settings) -> pd.DataFrame:
    """Run resolved rows in batched sessions; one result record per row, in input order.

    ``options``: a :class:`~superscopes_nn.core.options.RunOptions` (``settings``: its fields, replaced
    for this call; ``max_new_tokens`` defaults to 10, ``progress`` to off). ``shared_prefix``: reuse the
    KV cache of the target tokens before the first patched position (same token ids in float32, less
    compute). ``exact``: one row per chunk, no prefix reuse (bit-reproducible half precision). ``run_dir``:
    keep every finished chunk on disk (:mod:`superscopes_nn.core.store`) and write ``results.csv`` /
    ``results.parquet`` at the end; ``resume=True`` skips the rows already there (a changed config is an
    error). ``retries`` / ``backoff`` / ``sleep``: NDIF retries of remote sessions; ``chunks_per_request``:
    chunks per session (:func:`~superscopes_nn.engine.plan.batching`: default 8 remote, 1 local).
    ``sampling``: None (greedy) or a :class:`~superscopes_nn.core.sampling.Sampling` (local runs only).
    ``on_chunk(records)`` runs after each chunk is stored.
    """
    opts = RunOptions.of(options, **settings).with_defaults()
    max_new_tokens, remote, backend = opts.max_new_tokens, opts.remote, opts.backend
    target_model = model if target_model is None else target_model
    gen = greedy_kwargs(target_model, max_new_tokens)
    opts = opts.replace(sampling=check_sampling(opts.sampling, check_remote(remote).value, backend))
    check_batch_size(opts.max_batch_size)
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to run")
    check_max_new_tokens(max_new_tokens, max(len(r.target_ids) for r in rows), model_info(target_model).context,
                         model_name(target_model))
    call = remote_caller(remote, backend, target_model, opts.retries, opts.backoff, opts.sleep)  # bad remote: before disk
    store = None
    if opts.run_dir is not None:
        store = RunStore(opts.run_dir, run_config(model, target_model, max_new_tokens, opts.config, opts.sampling),
                         resume=opts.resume)
    keys = [row_key(r) for r in rows]
    results = store.records_by_key() if store is not None else {}
    pending, queued = [], set()
    for r, k in zip(rows, keys):
        if k not in results and k not in queued:
            queued.add(k)
            pending.append(r)
    eos, tok = eos_ids(target_model), target_model.tokenizer
    src_name, tgt_name = model_name(model), model_name(target_model)
    bar = None
    if opts.progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), initial=len(rows) - len(pending), desc="patching", unit="row")
    try:
        if pending:
            for idx, chunk, (ids, finite, mapped_ok) in run_requests(
                    model, pending, opts, target_model=target_model, gen_kwargs=gen, call=call):
                prompt_len = chunk.target_ids.shape[1]
                done = []
                for b, i in enumerate(idx):
                    err = _row_error(bool(mapped_ok[b]), bool(finite[b]), chunk.dtype)
                    rec = row_record(pending[i], trim_new_tokens(ids[b, prompt_len:].tolist(), eos), tok,
                                     src_name, tgt_name, err)
                    if err:  # report the row, never its garbage text
                        warnings.warn(f"{err}: {rec['source_prompt']!r} layer {rec['source_layer']} site "
                                      f"{rec['site']} alpha {rec['alpha']:g}; row marked in column 'error'")
                    done.append(rec)
                if store is not None:
                    store.append(done)
                for rec, i in zip(done, idx):
                    results[row_key(pending[i])] = rec
                if on_chunk is not None:
                    on_chunk(done)
                if bar is not None:
                    bar.update(len(idx))
        df = frame([results[k] for k in keys])
        if store is not None:
            store.write_tables(df)
    except BaseException:
        if store is not None:
            store.abandon()  # a failed start leaves no config.json behind
        raise
    finally:
        if bar is not None:
            bar.close()
        if store is not None:
            store.close()
    return df
