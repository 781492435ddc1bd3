"""Patchscopes as one generic routine, specialised by small wrappers.

A Patchscope (Ghandeharioun et al. 2024) reads the representation at
(source prompt S, position i, model M, layer l), maps it with f, writes it into
(target prompt T, position i*, model M*, layer l*) on the prompt pass only, and
lets M* generate. In code::

    from superscopes_nn import load_model, Source, Target, Amplify, patchscope

    model = load_model("gemma-3-270m")
    df = patchscope(model, [
        (Source("Alexander the Great", layer=4, position="Great"), Target(ENTITY_PROMPT), Amplify(6)),
    ])
    df[["source_layer", "alpha", "interpretation"]]

``sweep`` builds the usual grid (prompts x sites x layers x alpha) and runs it as
few batched ``generate`` calls as possible; ``logit_lens`` is the special case of
patching into the last layer of the same prompt and reading the next token.

Everything runs inside one nnsight ``session`` per chunk of ``max_batch_size``
rows (source traces, then one batched ``generate``), so the same code runs with
``remote=False`` (here), ``remote="local"`` (nnsight's serialization round
trip) or ``remote=True`` (NDIF, one request per chunk).

Exactness: rows are grouped by the token length of their target prompt, so a
batch never needs padding, and all patches of a batch are written by one
indexed assignment per (layer, site). The batched result equals running each
row alone (``tests/test_patching.py`` checks token ids against plain-HF hooks).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Sequence

import nnsight
import pandas as pd
import torch

from .architectures import SITE_ORDER, ArchSpec, arch_spec, check_site, get_path, hidden_size, num_layers

ENTITY_PROMPT = (
    "Syria: Country in the Middle East, Leonardo DiCaprio: American actor, Samsung: South Korean "
    "multinational major appliance and consumer electronics corporation, x"
)
IDENTITY_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"

RESULT_COLUMNS = [
    "source_prompt", "source_position", "source_token", "source_layer", "site",
    "target_prompt", "target_position", "target_layer", "target_site", "mapping", "alpha",
    "model", "target_model", "interpretation", "token_ids", "error",
]


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Source:
    """Where to read: ``prompt``, token ``position`` (int, negative ok, or a token
    string resolved to the last sub-token of its only occurrence), ``layer`` and ``site``."""

    prompt: str
    layer: int
    position: int | str = -1
    site: str = "residual"


@dataclass(frozen=True)
class Target:
    """Where to write: ``prompt`` with a ``placeholder`` word (default ``x``) or an
    explicit ``position``; ``layer``/``site`` default to the source's."""

    prompt: str = ENTITY_PROMPT
    layer: int | None = None
    position: int | str | None = None
    placeholder: str = "x"
    site: str | None = None


class Identity:
    """f(v) = v."""

    name = "identity"
    alpha = 1.0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return v


@dataclass(frozen=True)
class Amplify:
    """f(v) = alpha * v (Superscopes). ``alpha`` must be finite and > 0."""

    alpha: float
    name: str = field(default="amplify", init=False)

    def __post_init__(self):
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
            raise ValueError(f"amplification factor must be a finite number > 0, got {a!r}")

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return v * self.alpha


@dataclass(frozen=True, eq=False)
class Affine:
    """f(v) = weight @ v + bias; ``weight`` is [d_target, d_source], ``bias`` [d_target]."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    name: str = field(default="affine", init=False)
    alpha: float = field(default=float("nan"), init=False)

    def __post_init__(self):
        if self.weight.dim() != 2:
            raise ValueError(f"affine weight must be 2-D [d_target, d_source], got shape {tuple(self.weight.shape)}")
        if self.bias is not None and tuple(self.bias.shape) != (self.weight.shape[0],):
            raise ValueError(f"affine bias shape {tuple(self.bias.shape)} does not match weight {tuple(self.weight.shape)}")

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        out = v.to(self.weight.dtype) @ self.weight.T
        return out + self.bias if self.bias is not None else out


@dataclass(frozen=True, eq=False)
class Fn:
    """Any torch callable ``v -> v'`` ([d_source] -> [d_target])."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    name: str = "callable"
    alpha: float = float("nan")

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.fn(v)


def as_mapping(f: Any):
    """Normalise ``None`` / a number / a mapping / a callable to a mapping object."""
    if f is None:
        return Identity()
    if isinstance(f, (Identity, Amplify, Affine, Fn)):
        return f
    if isinstance(f, (int, float)) and not isinstance(f, bool):
        return Amplify(float(f))
    if callable(f):
        return Fn(f, name=getattr(f, "__name__", "callable"))
    raise ValueError(f"mapping must be None, a number (amplification), Affine, or a callable; got {f!r}")


# ------------------------------------------------------------------ resolution


def model_name(model) -> str:
    config = model._module.config
    return getattr(config, "_superscopes_name", None) or getattr(config, "_name_or_path", "") or type(model._module).__name__


def encode(tokenizer, prompt: str) -> list[int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    return list(tokenizer(prompt)["input_ids"])


def find_token(tokenizer, prompt: str, token: str, whole_word: bool = False) -> int:
    """Index of the last sub-token of the only occurrence of ``token`` in ``prompt``.

    Raises ``ValueError`` naming the token when it is absent or occurs more than once.
    """
    import re

    if not token:
        raise ValueError(f"token to find must be a non-empty string, got {token!r}")
    pattern = (r"(?<![\w])" + re.escape(token) + r"(?![\w])") if whole_word else re.escape(token)
    spans = [m.span() for m in re.finditer(pattern, prompt)]
    if not spans:
        raise ValueError(f"token {token!r} not found in prompt {prompt!r}")
    if len(spans) > 1:
        raise ValueError(f"token {token!r} is ambiguous: it occurs {len(spans)} times in prompt {prompt!r}; pass an int position")
    start, end = spans[0]
    enc = tokenizer(prompt, return_offsets_mapping=True)
    last = None
    for i, (s, e) in enumerate(enc["offset_mapping"]):
        if e > s and s < end and e > start:
            last = i
    if last is None:
        raise ValueError(f"token {token!r} does not map to any token of prompt {prompt!r}")
    return last


def resolve_position(tokenizer, prompt: str, position: int | str, n_tokens: int, whole_word: bool = False) -> int:
    if isinstance(position, str):
        return find_token(tokenizer, prompt, position, whole_word=whole_word)
    if isinstance(position, bool) or not isinstance(position, int):
        raise ValueError(f"position must be an int or a token string, got {position!r}")
    if not -n_tokens <= position < n_tokens:
        raise ValueError(f"position {position} out of range for prompt {prompt!r} of {n_tokens} tokens")
    return position % n_tokens


def check_layer(layer: Any, n: int, what: str, name: str) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"{what} layer must be an int, got {layer!r}")
    if not -n <= layer < n:
        raise ValueError(f"{what} layer {layer} out of range for {name} with {n} layers (valid 0..{n - 1})")
    return layer % n


@dataclass(frozen=True, eq=False)
class Row:
    """One fully resolved patch (absolute positions and layers, token ids)."""

    source_prompt: str
    source_ids: tuple[int, ...]
    source_position: int
    source_layer: int
    site: str
    target_prompt: str
    target_ids: tuple[int, ...]
    target_position: int
    target_layer: int
    target_site: str
    mapping: Any
    source_token: str = ""
    extra: dict = field(default_factory=dict)


def resolve(model, patches: Iterable[tuple[Source, Target, Any]], target_model=None) -> list[Row]:
    """Validate and resolve ``(Source, Target, mapping)`` triples into :class:`Row` s."""
    target_model = model if target_model is None else target_model
    tok, ttok = model.tokenizer, target_model.tokenizer
    n_src, n_tgt = num_layers(model._module.config), num_layers(target_model._module.config)
    d_src, d_tgt = hidden_size(model._module.config), hidden_size(target_model._module.config)
    src_name, tgt_name = model_name(model), model_name(target_model)
    cache: dict = {}

    def ids_of(t, prompt):
        key = (id(t), prompt)
        if key not in cache:
            cache[key] = tuple(encode(t, prompt))
        return cache[key]

    rows = []
    for item in patches:
        src, tgt, f = (tuple(item) + (None,))[:3] if len(item) == 2 else item
        f = as_mapping(f)
        check_site(src.site)
        tsite = check_site(tgt.site or src.site)
        sids = ids_of(tok, src.prompt)
        spos = resolve_position(tok, src.prompt, src.position, len(sids))
        slayer = check_layer(src.layer, n_src, "source", src_name)
        tlayer = check_layer(src.layer if tgt.layer is None else tgt.layer, n_tgt, "target", tgt_name)
        tids = ids_of(ttok, tgt.prompt)
        if tgt.position is None:
            if not tgt.placeholder or not isinstance(tgt.placeholder, str):
                raise ValueError(f"target needs a placeholder or a position, got placeholder={tgt.placeholder!r}")
            try:
                tpos = find_token(ttok, tgt.prompt, tgt.placeholder, whole_word=True)
            except ValueError as err:
                raise ValueError(f"target prompt {tgt.prompt!r} has no usable placeholder {tgt.placeholder!r}: {err}") from None
        else:
            tpos = resolve_position(ttok, tgt.prompt, tgt.position, len(tids), whole_word=True)
        if isinstance(f, (Identity, Amplify)) and d_src != d_tgt:
            raise ValueError(
                f"hidden sizes differ ({src_name}: {d_src}, {tgt_name}: {d_tgt}); pass an Affine mapping or a callable"
            )
        if isinstance(f, Affine) and tuple(f.weight.shape) != (d_tgt, d_src):
            raise ValueError(f"affine weight shape {tuple(f.weight.shape)} != (d_target, d_source) = {(d_tgt, d_src)}")
        rows.append(Row(
            src.prompt, sids, spos, slayer, src.site, tgt.prompt, tids, tpos, tlayer, tsite, f,
            source_token=tok.decode([sids[spos]]),
        ))
    if not rows:
        raise ValueError("no patches to run (empty prompt, layer, site or alpha list?)")
    return rows


# ------------------------------------------------------------------ the session


def site_tensor(model, spec: ArchSpec, layer: int, site: str) -> torch.Tensor:
    """The live tensor of ``site`` at ``layer`` inside a trace: [batch, seq, d]."""
    block = get_path(model, spec.layers)[layer]
    env = get_path(block, spec.site_module(site))
    value = env.input if spec.site_is_input(site) else env.output
    return value[0] if isinstance(value, tuple) else value


@dataclass
class Job:
    """What one session runs: source reads and one batched patched forward/generate.

    ``source_groups``: list of groups; a group is a list of ``(ids, reads)`` with
    equal-length ``ids``; ``reads`` is a list of ``(key, layer, site, position)``
    sorted in forward order. ``target_ids``: [B, T] long tensor. ``writes``: list
    of ``(layer, site, rows, positions, row_index)`` sorted in forward order.
    ``mappings``: per batch row, ``(key, mapping)``. ``positions``: [B] target positions.
    ``prefix_len``: target tokens shared by every row before the first patched
    position; when > 0 their key/value cache is computed once and reused.
    """

    spec: ArchSpec
    target_spec: ArchSpec
    source_groups: list
    target_ids: torch.Tensor
    writes: list
    mappings: list
    gen_kwargs: dict
    positions: torch.Tensor
    logits: bool = False
    prefix_len: int = 0
    dtype: torch.dtype = torch.float32


def source_key(r: Row) -> tuple:
    """Identity of the source vector a row reads."""
    return (r.source_ids, r.source_layer, r.site, r.source_position)


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


def _build_job(model, target_model, rows: Sequence[Row], gen_kwargs: dict, logits: bool,
               known: Iterable = (), shared_prefix: bool = False) -> Job:
    """Plan one session for ``rows``; source vectors whose key is in ``known`` are not re-read."""
    known = set(known)
    by_prompt: dict = {}
    for r in rows:
        key = source_key(r)
        if key not in known:
            by_prompt.setdefault(r.source_ids, set()).add((key, r.source_layer, r.site, r.source_position))
    groups: dict = {}
    for ids, reads in by_prompt.items():
        ordered = sorted(reads, key=lambda k: (k[1], SITE_ORDER[k[2]], k[3]))
        groups.setdefault(len(ids), []).append((torch.tensor([ids]), ordered))
    writes: dict = {}
    for b, r in enumerate(rows):
        writes.setdefault((r.target_layer, r.target_site), []).append((b, r.target_position))
    write_list = []
    for (layer, site), items in sorted(writes.items(), key=lambda kv: (kv[0][0], SITE_ORDER[kv[0][1]])):
        b_idx = [b for b, _ in items]
        write_list.append((layer, site, torch.tensor(b_idx), torch.tensor([p for _, p in items]), b_idx))
    mappings = [(source_key(r), r.mapping) for r in rows]
    prefix = shared_prefix_len(rows) if shared_prefix else 0
    return Job(
        arch_spec(model._module.config), arch_spec(target_model._module.config), list(groups.values()),
        torch.tensor([list(r.target_ids) for r in rows]), write_list, mappings, gen_kwargs,
        torch.tensor([r.target_position for r in rows]), logits, prefix, target_model._module.dtype,
    )


def map_vectors(vectors: dict, mappings: list, dtype: torch.dtype = torch.float32) -> tuple[list, torch.Tensor]:
    """Apply each row's mapping to its source vector.

    Returns ``(patched, ok)``: a list of [d_target] tensors and a [B] bool tensor
    that is False where the mapped vector is not finite in ``dtype`` (the model's
    dtype: an fp16 model overflows at 65504). Such rows get a zero vector, so the
    batch still runs, and are reported by the caller instead of their text.
    """
    out, ok = [], []
    for key, f in mappings:
        v = f(vectors[key].float())
        good = bool(torch.isfinite(v.to(dtype)).all())
        out.append(v if good else torch.zeros_like(v))
        ok.append(good)
    return out, torch.tensor(ok)


def write_patches(model, spec: ArchSpec, writes: list, patched: list, offset: int = 0) -> None:
    """Inside an invoke: write every patch, one indexed assignment per (layer, site).

    ``offset``: tokens served from a reused KV cache (absent from the pass's tensors).
    """
    for layer, site, b_rows, positions, b_idx in writes:
        t = site_tensor(model, spec, layer, site)
        t[b_rows, positions - offset] = torch.stack([patched[i] for i in b_idx]).to(t.dtype)


def expand_cache(cache, batch: int):
    """Repeat a batch-1 KV cache ``batch`` times along the batch dimension (in place)."""
    cache.batch_repeat_interleave(batch)
    return cache


def read_sources(model, spec: ArchSpec, reads: list, vectors: dict) -> None:
    """Inside an invoke: store ``site[0, position]`` of every read into ``vectors``."""
    for key, layer, site, pos in reads:
        vectors[key] = site_tensor(model, spec, layer, site)[0, pos].detach().clone()


def _ship_library(remote, backend) -> None:
    if remote or backend is not None:
        from .remote import register

        register()


def run_sources(model, job: Job, remote=False, backend=None) -> dict:
    """Session on the source model: key -> [d] vector for every read of ``job``."""
    _ship_library(remote, backend)
    with model.session(remote=remote, backend=backend):
        vectors = {}
        for group in job.source_groups:
            with model.trace() as tracer:
                for ids, reads in group:
                    with tracer.invoke(ids):
                        read_sources(model, job.spec, reads, vectors)
        vectors.save()
    return vectors


def _logits_window(model, n_tokens: int, positions: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Compute vocabulary logits only from the earliest target position on (``logits_to_keep``).

    ``positions``: [B] indices into a pass of ``n_tokens`` tokens. Returns the forward
    kwargs and the positions re-indexed into the kept window; models whose forward
    lacks ``logits_to_keep`` get every position (same values).
    """
    if "logits_to_keep" not in inspect.signature(model._module.forward).parameters:
        return {}, positions
    keep = n_tokens - int(positions.min())
    return {"logits_to_keep": keep}, positions - (n_tokens - keep)


def run_job(model, job: Job, remote=False, backend=None, vectors: dict | None = None):
    """One session: read the sources ``vectors`` lacks (from another model or an
    earlier chunk), map them, patch them into the batched target prompts, generate.

    Returns ``(out, vectors)``: ``out`` is ``(ids [B, T + new], finite [B], mapped_ok [B])``
    (``finite``: the patched prompt pass gave finite logits; ``mapped_ok``: the mapped
    vector was finite in the model's dtype), or [B, vocab] logits at the target
    positions when ``job.logits`` (NaN rows where the mapped vector was not finite);
    ``vectors`` every source vector used (key -> [d]).
    """
    _ship_library(remote, backend)
    with model.session(remote=remote, backend=backend):
        vectors = dict(vectors or {})
        for group in job.source_groups:
            with model.trace() as tracer:
                for src_ids, reads in group:
                    with tracer.invoke(src_ids):
                        read_sources(model, job.spec, reads, vectors)
        patched, mapped_ok = map_vectors(vectors, job.mappings, job.dtype)
        if job.logits:
            ids, offset, kw = job.target_ids, job.prefix_len, {}
            if offset:
                with model.trace(ids[:1, :offset]):
                    cache = model.output.past_key_values
                kw["past_key_values"] = expand_cache(cache, len(ids))
                ids = ids[:, offset:]
            keep, positions = _logits_window(model, ids.shape[1], job.positions - offset)
            with model.trace(**keep) as tracer:
                with tracer.invoke(ids, **kw):  # the cache goes with the invoke: nnsight then adds no short mask
                    write_patches(model, job.target_spec, job.writes, patched, offset)
                    logits = model.output.logits[torch.arange(len(positions)), positions]
            logits[~mapped_ok] = float("nan")
            out = logits.save()
        else:
            gen_kwargs = dict(job.gen_kwargs)
            if job.prefix_len:
                with model.trace(job.target_ids[:1, : job.prefix_len]):
                    cache = model.output.past_key_values
                gen_kwargs["past_key_values"] = expand_cache(cache, len(job.target_ids))
            with model.generate(**gen_kwargs) as tracer:
                with tracer.invoke(job.target_ids):
                    write_patches(model, job.target_spec, job.writes, patched, job.prefix_len)
                    head = get_path(model, job.target_spec.lm_head).output
                    finite = torch.isfinite(head).flatten(1).all(1)
                    ids = tracer.result
            out = nnsight.save((ids, finite, mapped_ok))
        vectors.save()
    return out, vectors


# ------------------------------------------------------------------ public API


def _chunks(lengths: Sequence[int], max_batch_size: int):
    """Group items by token length (no padding), then split into batches; yields index lists."""
    by_len: dict = {}
    for i, n in enumerate(lengths):
        by_len.setdefault(n, []).append(i)
    for idx in by_len.values():
        for k in range(0, len(idx), max_batch_size):
            yield idx[k:k + max_batch_size]


def _gen_kwargs(target_model, max_new_tokens: int) -> dict:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    tok = target_model.tokenizer
    return dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                top_p=None, top_k=None, temperature=None)


def _row_record(r: Row, new_ids: list[int], tokenizer, src_name: str, tgt_name: str) -> dict:
    return {
        "source_prompt": r.source_prompt, "source_position": r.source_position, "source_token": r.source_token,
        "source_layer": r.source_layer, "site": r.site, "target_prompt": r.target_prompt,
        "target_position": r.target_position, "target_layer": r.target_layer, "target_site": r.target_site,
        "mapping": r.mapping.name, "alpha": float(r.mapping.alpha), "model": src_name, "target_model": tgt_name,
        "interpretation": tokenizer.decode(new_ids, skip_special_tokens=True), "token_ids": new_ids,
        **r.extra,
    }


def trim_new_tokens(ids: Sequence[int], eos_ids: set) -> list[int]:
    """New token ids up to (not including) the first end-of-sequence token."""
    out = []
    for t in ids:
        if int(t) in eos_ids:
            break
        out.append(int(t))
    return out


def _eos_ids(target_model) -> set:
    eos = target_model._module.generation_config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    if target_model.tokenizer.eos_token_id is not None:
        eos.append(target_model.tokenizer.eos_token_id)
    return set(eos)


def execute(model, rows: list[Row], *, target_model=None, gen_kwargs: dict | None = None, logits: bool = False,
            max_batch_size: int = 64, shared_prefix: bool = True, remote: bool | str = False, backend=None,
            call_chunk: Callable | None = None):
    """The generic routine: yield ``(chunk_indices, job, out)`` for every chunk of ``rows``.

    Each chunk is one session on the target model (plus one on the source model
    when it differs). A source vector is read once per sweep: chunks reuse the
    vectors earlier chunks read. ``call_chunk(fn)`` wraps every session call (the
    run store passes NDIF retries here).
    """
    call = call_chunk or (lambda fn: fn())
    target_model = model if target_model is None else target_model
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
    known: dict = {}
    for idx in _chunks([len(r.target_ids) for r in rows], max_batch_size):
        chunk = [rows[i] for i in idx]
        job = _build_job(model, target_model, chunk, gen_kwargs or {}, logits, known=known, shared_prefix=shared_prefix)
        if target_model is not model:
            if job.source_groups:
                known.update(call(lambda: run_sources(model, job, remote, backend)))
            job = replace(job, source_groups=[])
        needed = {source_key(r) for r in chunk}
        given = {k: known[k] for k in needed if k in known}
        out, used = call(lambda: run_job(target_model, job, remote, backend, vectors=given))
        known.update(used)
        yield idx, job, out


def run_rows(model, rows: list[Row], *, target_model=None, max_new_tokens: int = 10, max_batch_size: int = 64,
             shared_prefix: bool = True, remote: bool | str = False, backend=None, progress: bool = False,
             on_chunk=None, call_chunk=None, run_dir=None, resume: bool = False,
             config: dict | None = None) -> pd.DataFrame:
    """Run resolved rows in batched sessions; one result record per row, in input order.

    ``shared_prefix``: compute the target tokens before the first patched position
    once per chunk and reuse their KV cache (same token ids, less compute).
    ``on_chunk(records)`` is called with the records of every finished chunk (the
    run store appends them to disk); ``call_chunk(fn)`` wraps each session call.
    ``run_dir``: keep every finished chunk on disk there (:mod:`superscopes_nn.store`:
    ``config.json`` = model names, ``max_new_tokens`` and ``config``; ``rows.jsonl``);
    ``resume=True`` skips the rows already there, and a changed config is an error.
    """
    if run_dir is not None:
        from .store import run_sweep

        cfg = {"model": model_name(model), "target_model": model_name(target_model or model),
               "max_new_tokens": max_new_tokens, **(config or {})}
        return run_sweep(model, rows, run_dir, cfg, resume=resume, on_chunk=on_chunk, target_model=target_model,
                         max_new_tokens=max_new_tokens, max_batch_size=max_batch_size, shared_prefix=shared_prefix,
                         remote=remote, backend=backend, progress=progress)
    target_model = model if target_model is None else target_model
    gen = _gen_kwargs(target_model, max_new_tokens)
    eos = _eos_ids(target_model)
    src_name, tgt_name = model_name(model), model_name(target_model)
    records: list = [None] * len(rows)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="patching", unit="row")
    try:
        for idx, job, ids in execute(model, rows, target_model=target_model, gen_kwargs=gen,
                                     max_batch_size=max_batch_size, shared_prefix=shared_prefix,
                                     remote=remote, backend=backend, call_chunk=call_chunk):
            ids, finite, mapped_ok = ids
            prompt_len = job.target_ids.shape[1]
            done = []
            for b, i in enumerate(idx):
                new = trim_new_tokens(ids[b, prompt_len:].tolist(), eos)
                rec = _row_record(rows[i], new, target_model.tokenizer, src_name, tgt_name)
                rec["error"] = None
                if not bool(mapped_ok[b]):
                    rec["error"] = f"non-finite values after amplification (in {job.dtype})"
                elif not bool(finite[b]):
                    rec["error"] = "non-finite logits after patching"
                if rec["error"]:  # report the row, never its garbage text
                    rec.update(interpretation=None, token_ids=[])
                    warnings.warn(f"{rec['error']}: {rec['source_prompt']!r} layer {rec['source_layer']} "
                                  f"site {rec['site']} alpha {rec['alpha']:g}; row marked in column 'error'")
                records[i] = rec
                done.append(rec)
            if on_chunk is not None:
                on_chunk(done)
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame.from_records(records)


def patched_logits(model, rows: list[Row], *, target_model=None, max_batch_size: int = 64,
                   shared_prefix: bool = True, remote: bool | str = False, backend=None) -> torch.Tensor:
    """Next-token logits at each row's target position after patching: [N, vocab], input order.

    ``shared_prefix``: as in :func:`run_rows` (the target prefix's KV cache is reused).
    """
    out = [None] * len(rows)
    for idx, _, logits in execute(model, rows, target_model=target_model, logits=True,
                                  max_batch_size=max_batch_size, shared_prefix=shared_prefix,
                                  remote=remote, backend=backend):
        for b, i in enumerate(idx):
            out[i] = logits[b]
    return torch.stack(out)


def generate_plain(model, prompts: Sequence[str], max_new_tokens: int = 10, max_batch_size: int = 64,
                   remote: bool | str = False, backend=None) -> list[str]:
    """Greedy continuations of ``prompts`` with no patch (baselines: input-only, composed question).

    One ``generate`` per group of equal token length (no padding), at most
    ``max_batch_size`` prompts each; returns the decoded new text per prompt, input order.
    """
    if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
    gen = _gen_kwargs(model, max_new_tokens)
    eos = _eos_ids(model)
    ids = [encode(model.tokenizer, p) for p in prompts]
    out: list = [None] * len(ids)
    for chunk in _chunks([len(t) for t in ids], max_batch_size):
        n = len(ids[chunk[0]])
        with model.generate(torch.tensor([ids[i] for i in chunk]), remote=remote, backend=backend, **gen) as tracer:
            result = tracer.result.save()
        for b, i in enumerate(chunk):
            out[i] = model.tokenizer.decode(trim_new_tokens(result[b, n:].tolist(), eos), skip_special_tokens=True)
    return out


def patchscope(model, patches: Iterable, *, target_model=None, max_new_tokens: int = 10, max_batch_size: int = 64,
               shared_prefix: bool = True, remote: bool | str = False, backend=None,
               progress: bool = False, run_dir=None, resume: bool = False, config: dict | None = None) -> pd.DataFrame:
    """Run ``(Source, Target, mapping)`` triples; a tidy DataFrame, one row per patch.

    Columns: :data:`RESULT_COLUMNS` (``interpretation`` is the decoded new text,
    ``token_ids`` the new token ids up to the first end-of-sequence token).
    ``run_dir`` / ``resume`` / ``config``: keep finished rows on disk (see :func:`run_rows`).
    """
    rows = resolve(model, patches, target_model)
    return run_rows(model, rows, target_model=target_model, max_new_tokens=max_new_tokens,
                    max_batch_size=max_batch_size, shared_prefix=shared_prefix, remote=remote, backend=backend,
                    progress=progress, run_dir=run_dir, resume=resume, config=config)


def sweep_rows(model, prompts: Sequence[str] | str, *, layers: Iterable[int], sites: Sequence[str] = ("residual",),
               alphas: Sequence[float] = (1.0,), token: int | str | Sequence = -1, target: Target = Target(),
               target_layers: Iterable[int] | None = None, target_model=None, mapping=None) -> list[Row]:
    """Resolve the grid prompts x sites x layers x target layers x alphas into rows.

    ``token``: one position/token string for every prompt, or one per prompt.
    ``target_layers``: None = same as the source layer (``target.layer`` if set).
    ``mapping``: optional map applied before amplification (e.g. an ``Affine`` between models).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("no source prompts given")
    tokens = list(token) if isinstance(token, (list, tuple)) else [token] * len(prompts)
    if len(tokens) != len(prompts):
        raise ValueError(f"got {len(tokens)} tokens for {len(prompts)} prompts")
    layers = list(layers)
    alphas = list(alphas)
    if not layers:
        raise ValueError("empty layer list")
    if not alphas:
        raise ValueError("empty amplification (alpha) list")
    for a in alphas:
        Amplify(a)  # validates: finite and > 0
    tls = None if target_layers is None else list(target_layers)
    base = None if mapping is None else as_mapping(mapping)
    patches = []
    for prompt, tok in zip(prompts, tokens):
        for site in sites:
            for layer in layers:
                for tl in (tls if tls is not None else [target.layer]):
                    for a in alphas:
                        f = Amplify(a) if base is None else _Compose(base, a)
                        patches.append((Source(prompt, layer, tok, site), replace(target, layer=tl), f))
    return resolve(model, patches, target_model)


@dataclass(frozen=True, eq=False)
class _Compose:
    """alpha * base(v): an inter-model map followed by amplification."""

    base: Any
    alpha: float

    @property
    def name(self) -> str:
        return f"{self.base.name}+amplify"

    def __call__(self, v):
        return self.base(v) * self.alpha


def sweep(model, prompts, *, layers, sites=("residual",), alphas=(1.0,), token=-1, target: Target = Target(),
          target_layers=None, target_model=None, mapping=None, max_new_tokens: int = 10, max_batch_size: int = 64,
          shared_prefix: bool = True, remote: bool | str = False, backend=None, progress: bool = True,
          run_dir=None, resume: bool = False, config: dict | None = None) -> pd.DataFrame:
    """The grid prompts x sites x layers (x target layers) x alphas, batched.

    Returns a tidy DataFrame (:data:`RESULT_COLUMNS`), one row per grid cell.
    ``run_dir`` / ``resume`` / ``config``: keep finished rows on disk (see :func:`run_rows`).
    """
    rows = sweep_rows(model, prompts, layers=layers, sites=sites, alphas=alphas, token=token, target=target,
                      target_layers=target_layers, target_model=target_model, mapping=mapping)
    return run_rows(model, rows, target_model=target_model, max_new_tokens=max_new_tokens,
                    max_batch_size=max_batch_size, shared_prefix=shared_prefix, remote=remote, backend=backend,
                    progress=progress, run_dir=run_dir, resume=resume, config=config)


def collect(model, prompt: str, layers: Iterable[int], sites: Sequence[str] = ("residual",), *,
            remote: bool | str = False, backend=None) -> dict:
    """Read whole sites on one prompt: ``{(layer, site): [seq, d] tensor}`` (no patching)."""
    spec = arch_spec(model._module.config)
    n = num_layers(model._module.config)
    ids = torch.tensor([encode(model.tokenizer, prompt)])
    _ship_library(remote, backend)
    reads = sorted({(check_layer(l, n, "source", model_name(model)), check_site(s)) for l in layers for s in sites},
                   key=lambda k: (k[0], SITE_ORDER[k[1]]))
    with model.trace(ids, remote=remote, backend=backend):
        values = {}
        for layer, site in reads:
            values[(layer, site)] = site_tensor(model, spec, layer, site)[0].detach().clone()
        values.save()
    return values
