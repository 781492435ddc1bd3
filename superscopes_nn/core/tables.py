"""CSV that reads back what was written: every text quoted, the one writer and its reader.

``pandas.DataFrame.to_csv`` quotes a text only when it holds a comma, a quote or ``\\n``; a
generated text with a bare ``\\r`` is written unquoted and splits its row on reading. Here every
text is quoted (RFC 4180, ``"`` doubled), so ``\\r``, ``\\r\\n``, ``\\n``, quotes, commas, NUL and
any unicode survive, and plain ``pandas.read_csv(path)`` reads every such text back::

    write_csv(df, "runs/exp1/results.csv")
    pd.read_csv("runs/exp1/results.csv")      # the texts as written
    read_csv("runs/exp1/results.csv")         # exactly as written, "" / "NA" / "nan" / None included

The cell encoding: a missing value (``None``, NaN, ``pd.NA``) is an empty *unquoted* field; a
string is quoted; a list, tuple or dict is quoted JSON (``token_ids`` read back as lists by
:func:`read_csv`); ``True``/``False`` and numbers are bare (ints as ints, floats by ``repr``).
Plain ``pandas.read_csv`` cannot tell a quoted ``""``, ``"NA"`` or ``"nan"`` from a missing value
(it reads all of them as NaN); :func:`read_csv`, which knows the quoting, can. A ``.gz`` path is
gzipped.
"""

from __future__ import annotations

import gzip
import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from .specs import RESULT_COLUMNS

#: Columns :func:`read_csv` turns back from JSON text into lists.
JSON_COLUMNS = ("token_ids",)
_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^,"\r\n]*)')
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?inf")


def _missing(v) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    return isinstance(v, float) and math.isnan(v)


def _cell(v) -> str:
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        v = v.tolist()  # numpy scalars and arrays
    if _missing(v):
        return ""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))
    if isinstance(v, (list, tuple, dict)):
        v = json.dumps(v, ensure_ascii=False, default=str)
    return '"' + str(v).replace('"', '""') + '"'


def csv_text(df: pd.DataFrame) -> str:
    """The CSV text of ``df`` (no index), every text quoted; see the module docstring."""
    lines = [",".join(_cell(str(c)) for c in df.columns)]
    for row in df.itertuples(index=False, name=None):
        lines.append(",".join(_cell(v) for v in row))
    return "\n".join(lines) + "\n"


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` to ``path`` as UTF-8 CSV (gzipped for ``.gz``), every text quoted."""
    path = Path(path)
    data = csv_text(df).encode("utf-8")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def _value(quoted: str | None, bare: str):
    if quoted is not None:
        return quoted.replace('""', '"')
    if bare == "":
        return None
    if bare in ("True", "False"):
        return bare == "True"
    if _INT.fullmatch(bare):
        return int(bare)
    if _FLOAT.fullmatch(bare):
        return float(bare)
    return bare  # a bare text of another writer (pandas' minimal quoting)


def parse_csv(text: str) -> list[list]:
    """Rows of values (see :func:`_value`) from CSV text; a quoted field may hold any character."""
    rows, row, pos, n = [], [], 0, len(text)
    while pos < n:
        m = _FIELD.match(text, pos)
        row.append(_value(m.group(1), m.group(2)))
        pos = m.end()
        if pos >= n:
            break
        sep = text[pos]
        if sep == ",":
            pos += 1
            if pos == n:
                row.append(None)
            continue
        if sep not in "\r\n":
            raise ValueError(f"malformed CSV at character {pos}: {text[max(0, pos - 30):pos + 30]!r}")
        pos += 2 if text.startswith("\r\n", pos) else 1
        rows.append(row)
        row = []
    if row:
        rows.append(row)
    return rows


def read_csv(path: str | os.PathLike, json_columns: Sequence[str] = JSON_COLUMNS) -> pd.DataFrame:
    """A CSV of :func:`write_csv` back as written (texts, missing values, numbers, ``json_columns`` lists)."""
    path = Path(path)
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    rows = parse_csv(data.decode("utf-8"))
    if not rows:
        raise ValueError(f"{path} is empty (no header)")
    header, body = [str(c) for c in rows[0]], rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise ValueError(f"{path}: row {i + 1} has {len(r)} fields, the header {len(header)}")
    records = [dict(zip(header, r)) for r in body]
    for r in records:
        for c in json_columns:
            if isinstance(r.get(c), str) and r[c].startswith("["):
                r[c] = json.loads(r[c])
    df = pd.DataFrame.from_records(records, columns=header)
    return df


# ------------------------------------------------------------------ the results tables of a run directory


def write_tables(df: pd.DataFrame, run_dir: str | os.PathLike) -> None:
    """The one results-table writer: ``results.csv`` (every text quoted: :mod:`~superscopes_nn.core.tables`)
    and ``results.parquet`` in ``run_dir``, atomically."""
    run_dir = Path(run_dir)
    for name, write in (("results.csv", lambda p: write_csv(df, p)),
                        ("results.parquet", lambda p: df.to_parquet(p, index=False))):
        tmp = run_dir / f".{name}.tmp"
        try:
            write(tmp)
            os.replace(tmp, run_dir / name)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(err.errno, f"cannot write {run_dir / name}: {err.strerror or err}") from None


def frame(records: list[dict]) -> pd.DataFrame:
    """A results DataFrame: :data:`RESULT_COLUMNS` first, then the rows' extra fields."""
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    cols = [c for c in RESULT_COLUMNS if c in df.columns] + [c for c in df.columns if c not in RESULT_COLUMNS]
    return df[cols]
