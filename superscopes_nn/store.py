"""A run directory that keeps every finished row on disk, so a run can resume.

A run directory holds two files:

- ``config.json``: the run's full configuration (model, prompts, sites, layers,
  alphas, target, generation settings, ``max_batch_size``) plus ``versions``
  (superscopes_nn, nnsight, torch, transformers), written atomically.
- ``rows.jsonl``: one JSON object per finished row (the keys of
  :data:`~superscopes_nn.patching.RESULT_COLUMNS`), appended after every finished
  chunk, flushed and fsynced. A kill loses at most the chunk in flight.

Usage::

    from superscopes_nn.store import run_sweep

    rows = sweep_rows(model, prompts, layers=range(9), alphas=[1, 6])
    df = run_sweep(model, rows, "runs/exp1", config, max_batch_size=16)
    # ... killed half way? The same call with resume=True skips the finished rows:
    df = run_sweep(model, rows, "runs/exp1", config, resume=True, max_batch_size=16)

A row is identified by :func:`row_key` (for a resolved :class:`~superscopes_nn.patching.Row`)
or :func:`record_key` (for a stored record); both give the same string. Resuming
with a different configuration is refused (``ValueError`` naming the first
differing key); reusing a directory that already has rows without ``resume`` is
refused too (``FileExistsError``). With ``remote=`` set, every chunk runs through
:func:`~superscopes_nn.ndif_errors.call_remote`: transient NDIF failures are
retried, and a chunk that still fails raises
:class:`~superscopes_nn.ndif_errors.NDIFError` with every earlier chunk on disk.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from .patching import RESULT_COLUMNS

CONFIG_FILE = "config.json"
ROWS_FILE = "rows.jsonl"
KEY_FIELDS = ("source_prompt", "source_position", "source_layer", "site", "target_prompt", "target_position",
              "target_layer", "target_site", "mapping", "alpha")
_MISSING = "<missing>"


# ------------------------------------------------------------------ row identity


def _key(values: Sequence, extra: dict) -> str:
    """A stable string: JSON of the defining fields (floats normalised, NaN as ``"nan"``)."""
    norm = []
    for name, v in zip(KEY_FIELDS, values):
        if name == "alpha":
            v = float(v)
            v = repr(v) if not math.isfinite(v) else v
        norm.append(v)
    if extra:
        norm.append(sorted(extra.items()))
    return json.dumps(norm, ensure_ascii=False, separators=(",", ":"), default=repr)


def row_key(row) -> str:
    """Identity of a resolved :class:`~superscopes_nn.patching.Row` (same as :func:`record_key` of its record)."""
    return _key((row.source_prompt, row.source_position, row.source_layer, row.site, row.target_prompt,
                 row.target_position, row.target_layer, row.target_site, row.mapping.name, row.mapping.alpha),
                dict(row.extra))


def record_key(record: dict) -> str:
    """Identity of a result record (a dict with :data:`RESULT_COLUMNS`, plus any extra fields of the row)."""
    missing = [k for k in KEY_FIELDS if k not in record]
    if missing:
        raise KeyError(f"record lacks the key field(s) {missing}: {sorted(record)}")
    extra = {k: v for k, v in record.items() if k not in RESULT_COLUMNS}
    return _key([record[k] for k in KEY_FIELDS], extra)


# ------------------------------------------------------------------ config


def library_versions() -> dict:
    """Versions of the libraries a run's numbers depend on."""
    import nnsight
    import torch
    import transformers

    import superscopes_nn

    return {"superscopes_nn": superscopes_nn.__version__, "nnsight": nnsight.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__}


def _normalise_config(config: dict) -> dict:
    """JSON round trip (tuples -> lists): what will be on disk; fail fast on non-JSON values."""
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}: {config!r}")
    for k, v in config.items():
        if not isinstance(k, str):
            raise ValueError(f"config keys must be strings, got {k!r}")
        try:
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config value of {k!r} is not JSON-serializable ({err}): {v!r}") from None
    return json.loads(json.dumps(config))


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """``(dotted key, old value, new value)`` of the first difference (keys sorted), or ``None``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}" if path else k
            if k not in old or k not in new:
                return sub, old.get(k, _MISSING), new.get(k, _MISSING)
            diff = first_difference(old[k], new[k], sub)
            if diff is not None:
                return diff
        return None
    return None if old == new else (path or "<config>", old, new)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------ the store


@dataclass(frozen=True)
class _Scan:
    """What is in rows.jsonl: parsed records and the byte length of its valid prefix."""

    records: list
    valid_bytes: int
    needs_newline: bool


def _scan(path: Path) -> _Scan:
    """Parse rows.jsonl. An unparsable *last* line (a kill mid-write) is ignored;
    an unparsable line before it is corruption and raises ``ValueError``."""
    if not path.exists():
        return _Scan([], 0, False)
    data = path.read_bytes()
    records, pos, lineno = [], 0, 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        last = end == -1
        line = data[pos:] if last else data[pos:end]
        lineno += 1
        nxt = len(data) if last else end + 1
        if line.strip():
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"not a JSON object: {type(rec).__name__}")
            except ValueError as err:
                if nxt >= len(data):  # the torn tail of a killed append
                    return _Scan(records, pos, False)
                raise ValueError(f"{path}: line {lineno} is not a valid row ({err}): {line[:200]!r}") from None
            records.append(rec)
            if last:  # complete JSON but the newline never made it
                return _Scan(records, len(data), True)
        pos = nxt
    return _Scan(records, len(data), False)


class RunStore:
    """``config.json`` + ``rows.jsonl`` in ``run_dir``; see the module docstring.

    ``resume=False`` refuses a directory that already holds rows; ``resume=True``
    requires the stored config to equal ``config`` (``versions`` ignored).
    """

    def __init__(self, run_dir: str | os.PathLike, config: dict, resume: bool = False):
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise NotADirectoryError(f"run directory {self.run_dir} exists and is not a directory")
        self.config = _normalise_config({k: v for k, v in config.items() if k != "versions"})
        self.config["versions"] = library_versions()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        has_rows = bool(_scan(self.rows_path).records)
        if has_rows and not resume:
            raise FileExistsError(
                f"run directory {self.run_dir} already holds finished rows; pass resume=True (--resume) "
                "to continue it, or choose another directory")
        if resume and self.config_path.exists():
            stored = json.loads(self.config_path.read_text(encoding="utf-8"))
            diff = first_difference({k: v for k, v in stored.items() if k != "versions"},
                                    {k: v for k, v in self.config.items() if k != "versions"})
            if diff is not None:
                key, old, new = diff
                raise ValueError(
                    f"cannot resume {self.run_dir}: config {key!r} differs (stored {old!r}, now {new!r}); "
                    "rerun with the stored settings or choose another directory")
            if stored.get("versions") != self.config["versions"]:
                warnings.warn(f"resuming {self.run_dir} with different library versions: stored "
                              f"{stored.get('versions')}, now {self.config['versions']}", stacklevel=2)
            return
        _write_atomic(self.config_path, json.dumps(self.config, indent=2, ensure_ascii=False) + "\n")

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def rows_path(self) -> Path:
        return self.run_dir / ROWS_FILE

    def records(self) -> list[dict]:
        """Every stored record, in file order (duplicates kept)."""
        return _scan(self.rows_path).records

    def done_keys(self) -> set[str]:
        """Keys (:func:`record_key`) of every finished row."""
        return {record_key(r) for r in self.records()}

    def append(self, records: Sequence[dict]) -> None:
        """Append ``records`` (one line each) in one write, then flush and fsync.

        A torn last line left by a kill is truncated away first.
        """
        if not records:
            return
        for r in records:
            record_key(r)  # fail fast on a record without the key fields
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        scan = _scan(self.rows_path)
        if self.rows_path.exists() and self.rows_path.stat().st_size != scan.valid_bytes:
            with open(self.rows_path, "r+b") as f:
                f.truncate(scan.valid_bytes)
        if scan.needs_newline:
            text = b"\n" + text
        with open(self.rows_path, "ab") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def load(self) -> pd.DataFrame:
        """All finished rows, one per key (the first stored), in file order."""
        seen, out = set(), []
        for r in self.records():
            k = record_key(r)
            if k not in seen:
                seen.add(k)
                out.append(r)
        return _frame(out)


def _frame(records: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    cols = [c for c in RESULT_COLUMNS if c in df.columns] + [c for c in df.columns if c not in RESULT_COLUMNS]
    return df[cols]


# ------------------------------------------------------------------ running


def run_sweep(model, rows: Sequence, run_dir: str | os.PathLike, config: dict, resume: bool = False, *,
              retries: int = 3, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep,
              on_chunk: Callable[[list], None] | None = None, **run_kwargs) -> pd.DataFrame:
    """Run ``rows`` into ``run_dir``, skipping rows already finished there.

    ``run_kwargs`` go to :func:`~superscopes_nn.patching.run_rows` (``max_new_tokens``,
    ``max_batch_size``, ``remote``, ``backend``, ``target_model``, ``progress``).
    With a remote target each chunk is one :func:`~superscopes_nn.ndif_errors.call_remote`
    (``retries``, ``backoff``, ``sleep``). ``on_chunk(records)`` is called after each
    chunk is on disk. Returns every row's record (previous + new) in ``rows`` order.
    """
    from . import patching
    from .ndif_errors import call_remote, remote_host

    rows = list(rows)
    if not rows:
        raise ValueError("no rows to run")
    store = RunStore(run_dir, config, resume=resume)

    def save(records):
        store.append(records)
        if on_chunk is not None:
            on_chunk(records)

    done = store.done_keys()
    keys = [row_key(r) for r in rows]
    pending, queued = [], set()
    for r, k in zip(rows, keys):
        if k not in done and k not in queued:
            queued.add(k)
            pending.append(r)

    if pending:
        remote, backend = run_kwargs.get("remote", False), run_kwargs.get("backend")
        host = remote_host(remote)
        if host is None and backend is not None and getattr(backend, "host", None):
            host = backend.host
        call_chunk = None
        if host is not None:
            name = patching.model_name(run_kwargs.get("target_model") or model)
            call_chunk = functools.partial(call_remote, retries=retries, backoff=backoff, sleep=sleep, host=host,
                                           model=name)
        patching.run_rows(model, pending, on_chunk=save, call_chunk=call_chunk, **run_kwargs)

    by_key: dict = {}
    for r in store.records():
        by_key.setdefault(record_key(r), r)
    missing = [k for k in keys if k not in by_key]
    if missing:  # a bug, not a user error: the engine returned a row we cannot match
        raise RuntimeError(f"{len(missing)} rows have no stored result after the run, e.g. {missing[0]}")
    return _frame([by_key[k] for k in keys])
