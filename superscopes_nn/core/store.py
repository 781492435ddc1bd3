"""A run directory that keeps every finished row on disk, so a run can resume.

A run directory holds:

- ``config.json``: the run's configuration (one schema for every run:
  :func:`superscopes_nn.engine.run.run_config`: model, target model, ``max_new_tokens``,
  then the caller's settings) plus ``versions`` (superscopes_nn, nnsight, torch,
  transformers), written atomically;
- ``rows.jsonl``: one JSON object per finished row (the keys of
  :data:`~superscopes_nn.core.specs.RESULT_COLUMNS`), appended after every finished
  chunk, flushed and fsynced. A kill loses at most the chunk in flight;
- ``results.csv`` / ``results.parquet``: the finished table, written to a temporary
  file and renamed;
- a kernel lock on the directory itself, held while a writer has it open (deleting any
  file does not defeat it); a second writer gets
  :class:`~superscopes_nn.core.dirlock.RunDirBusy` naming the directory and the holder's
  pid (``.lock.owner``); a dead holder's lock is taken over (:mod:`~superscopes_nn.core.dirlock`).

:func:`~superscopes_nn.core.dirlock.check_run_dir` refuses an unwritable output directory
(a file, under a file, no permission, full disk) in one ``OSError`` line before any
model loads; a run that fails before its first row calls :meth:`RunStore.abandon`,
which leaves no ``config.json``.

Usage (what :func:`superscopes_nn.engine.run.run_rows` does with ``run_dir=``)::

    store = RunStore("runs/exp1", config, resume=True)
    done = store.records_by_key()       # finished rows, by row_key
    store.append(records)               # after each chunk
    store.write_tables(df)              # at the end

A row is identified by :func:`row_key` (for a resolved :class:`~superscopes_nn.core.specs.Row`)
or :func:`record_key` (for a stored record); both give the same string, and both
include the mapping's ``key`` (an ``Affine``'s weights hash, not just its name).
Resuming with a different configuration is refused (``ValueError`` naming the most
meaningful differing key: the model first, then the grid); so is reusing a
directory that already has rows without ``resume`` (``FileExistsError``), and rows
on disk without a ``config.json``. :func:`load_run` is the one reader for everyone
(the report included), with resume's torn-line handling and refusals (:func:`unique_records`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .._version import __version__
from .dirlock import DirLock
from .specs import RESULT_COLUMNS
from .tables import frame, write_tables  # noqa: F401  (the table writer and frame, re-exported)

CONFIG_FILE = "config.json"
ROWS_FILE = "rows.jsonl"
KEY_FIELDS = ("source_prompt", "source_position", "source_layer", "site", "target_prompt", "target_position",
              "target_layer", "target_site", "mapping_key", "alpha")
#: Config keys compared first on resume, so the message names what matters most.
PRIORITY_KEYS = ("model", "target_model", "command", "experiment", "prompts", "sites", "layers", "alphas",
                 "target_prompt", "max_new_tokens")
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
    """Identity of a resolved :class:`~superscopes_nn.engine.api.Row` (same as :func:`record_key` of its record)."""
    return _key((row.source_prompt, row.source_position, row.source_layer, row.site, row.target_prompt,
                 row.target_position, row.target_layer, row.target_site, row.mapping.key, row.mapping.alpha),
                dict(row.extra))


def record_key(record: dict) -> str:
    """Identity of a result record (a dict with :data:`RESULT_COLUMNS`, plus any extra fields of the row)."""
    missing = [k for k in KEY_FIELDS if k not in record]
    if missing == ["mapping_key"] and "mapping" in record:  # rows written before mapping keys existed
        record = {**record, "mapping_key": record["mapping"]}
        missing = []
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

    return {"superscopes_nn": __version__, "nnsight": nnsight.__version__,
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
    """``(dotted key, old value, new value)`` of the first difference (:data:`PRIORITY_KEYS` first, then sorted)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = set(old) | set(new)
        ordered = [k for k in PRIORITY_KEYS if k in keys] + sorted(k for k in keys if k not in PRIORITY_KEYS)
        for k in ordered:
            sub = f"{path}.{k}" if path else k
            if k not in old or k not in new:
                return sub, old.get(k, _MISSING), new.get(k, _MISSING)
            diff = first_difference(old[k], new[k], sub)
            if diff is not None:
                return diff
        return None
    return None if old == new else (path or "<config>", old, new)


def _clip(value, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


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
    lines: tuple = ()  # the line number of each record


def _scan(path: Path) -> _Scan:
    """Parse rows.jsonl. An unparsable *last* line (a kill mid-write) is ignored;
    an unparsable line before it is corruption and raises ``ValueError``."""
    if not path.exists():
        return _Scan([], 0, False)
    data = path.read_bytes()
    records, numbers, pos, lineno = [], [], 0, 0
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
                    return _Scan(records, pos, False, tuple(numbers))
                raise ValueError(f"{path}: line {lineno} is not a valid row ({err}): {line[:200]!r}") from None
            records.append(rec)
            numbers.append(lineno)
            if last:  # complete JSON but the newline never made it
                return _Scan(records, len(data), True, tuple(numbers))
        pos = nxt
    return _Scan(records, len(data), False, tuple(numbers))


def unique_records(path: Path, scan: _Scan | None = None) -> dict:
    """The first stored record of every row of ``path`` (rows.jsonl), by :func:`record_key`.

    The one keyed reader (resume and :func:`load_run`, so the report too): a record without
    a key field is refused (``ValueError`` naming the line and the fields); a repeated key
    (two writers once shared the directory) keeps the first record, with one warning line.
    """
    scan = _scan(path) if scan is None else scan
    out: dict = {}
    repeated = []
    for rec, lineno in zip(scan.records, scan.lines):
        try:
            key = record_key(rec)
        except KeyError:
            missing = [k for k in KEY_FIELDS if k not in rec and not (k == "mapping_key" and "mapping" in rec)]
            raise ValueError(f"{path}: line {lineno} lacks the key field(s) {', '.join(missing)}, so the row it "
                             "belongs to is unknown; restore the field(s) or delete the line (--resume then "
                             "reruns that row)") from None
        if key in out:
            repeated.append(lineno)
        else:
            out[key] = rec
    if repeated:
        warnings.warn(f"{path}: {len(repeated)} line(s) repeat an earlier row's key (first at line {repeated[0]}; "
                      "two writers once shared the directory?); the first record of each row is used",
                      stacklevel=3)
    return out


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
        self._lock = None
        self._wrote_config = False
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot create run directory {self.run_dir}: {err.strerror or err}") from None
        self._acquire()
        try:
            self._open(resume)
        except BaseException:
            self.close()
            raise

    def _acquire(self) -> None:
        self._lock = DirLock(self.run_dir)

    def close(self) -> None:
        """Release the directory's lock (also when the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _open(self, resume: bool) -> None:
        has_rows = bool(_scan(self.rows_path).records)
        if has_rows and not resume:
            raise FileExistsError(
                f"run directory {self.run_dir} already holds finished rows; pass resume=True (--resume) "
                "to continue it, or choose another directory")
        if has_rows and not self.config_path.exists():
            raise ValueError(f"cannot resume {self.run_dir}: it holds rows but no {CONFIG_FILE}, so the settings "
                             "they were made with are unknown; choose another directory")
        if resume and self.config_path.exists():
            try:
                stored = json.loads(self.config_path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise ValueError(f"cannot resume {self.run_dir}: {CONFIG_FILE} is not valid JSON ({err})") from None
            if not isinstance(stored, dict):
                raise ValueError(f"cannot resume {self.run_dir}: {CONFIG_FILE} must hold a JSON object, got "
                                 f"{type(stored).__name__} {_clip(stored)}")
            diff = first_difference({k: v for k, v in stored.items() if k != "versions"},
                                    {k: v for k, v in self.config.items() if k != "versions"})
            if diff is not None:
                key, old, new = diff
                raise ValueError(
                    f"cannot resume {self.run_dir}: config {key!r} differs (stored {old!r}, now {new!r}); "
                    "rerun with the stored settings or choose another directory")
            if stored.get("versions") != self.config["versions"]:
                warnings.warn(f"resuming {self.run_dir} with different library versions: stored "
                              f"{stored.get('versions')}, now {self.config['versions']}", stacklevel=3)
            return
        _write_atomic(self.config_path, json.dumps(self.config, indent=2, ensure_ascii=False) + "\n")
        self._wrote_config = True

    def abandon(self) -> None:
        """After a failed start: remove the ``config.json`` this store wrote if no row was stored; release the lock."""
        try:
            if self._wrote_config and not _scan(self.rows_path).records:
                self.config_path.unlink(missing_ok=True)
        finally:
            self.close()

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
        return set(unique_records(self.rows_path))

    def append(self, records: Sequence[dict]) -> None:
        """Append ``records`` (one line each) in one write, then flush and fsync.

        A torn last line left by a kill is truncated away first; a record whose row is
        already stored is not written again (one record per row key on disk).
        """
        if not records:
            return
        keys = [record_key(r) for r in records]  # fail fast on a record without the key fields
        scan = _scan(self.rows_path)
        stored = {record_key(r) for r in scan.records if all(k in r for k in KEY_FIELDS)}
        records = [r for r, k in zip(records, keys) if k not in stored]
        if not records:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        if self.rows_path.exists() and self.rows_path.stat().st_size != scan.valid_bytes:
            with open(self.rows_path, "r+b") as f:
                f.truncate(scan.valid_bytes)
        if scan.needs_newline:
            text = b"\n" + text
        try:
            with open(self.rows_path, "ab") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise OSError(err.errno, f"cannot append rows to {self.rows_path}: {err.strerror or err}") from None

    def records_by_key(self) -> dict:
        """The first stored record of every finished row, by :func:`record_key` (:func:`unique_records`)."""
        return unique_records(self.rows_path)

    def load(self) -> pd.DataFrame:
        """All finished rows, one per key (the first stored), in file order."""
        return frame(list(self.records_by_key().values()))

    def write_tables(self, df: pd.DataFrame) -> None:
        """``results.csv`` and ``results.parquet``, each written to a temporary file and renamed."""
        write_tables(df, self.run_dir)


def load_run(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """``(rows, config)`` of a run directory: the one reader, resume's (torn last line dropped, a row
    without a key field refused, repeated keys merged: :func:`unique_records`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    config_path, rows_path = run_dir / CONFIG_FILE, run_dir / ROWS_FILE
    for p in (config_path, rows_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing {p.name} in run directory: {p}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} must hold a JSON object, got {type(config).__name__} {_clip(config)}")
    scan = _scan(rows_path)
    if not scan.records:
        raise ValueError(f"{rows_path} has no rows (is the run finished?)")
    return frame(list(unique_records(rows_path, scan).values())), config
