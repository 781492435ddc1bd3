"""The scores of a run directory beside its rows, for :mod:`superscopes_nn.output.report`.

``superscopes explain`` scores its rows after the run store wrote them; it saves the ``score_*`` columns
to ``RUN_DIR/scores.jsonl`` (:func:`save_scores`), and the report merges them back (:func:`merge_scores`),
so ``superscopes report RUN_DIR`` colours the grid as ``explain`` printed it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ..core.store import record_key
from ..science.superscopes import SUCCESS_THRESHOLD

SCORE_PREFIX = "score_"
SCORES_FILE = "scores.jsonl"
"""A run directory's scores (``superscopes explain`` writes them): one JSON line per row, ``key`` (the row's
:func:`~superscopes_nn.core.store.record_key`) and its ``score_*`` values; the report merges them in."""


def finite_score(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def default_threshold(score_column: str | None, config: dict | None = None) -> float | None:
    """The success threshold a chosen cell must pass: the run's ``threshold`` if its config has one, else
    :data:`~superscopes_nn.science.superscopes.SUCCESS_THRESHOLD` for ``score_source_cosine``; None otherwise."""
    if isinstance((config or {}).get("threshold"), (int, float)):
        return float(config["threshold"])
    return SUCCESS_THRESHOLD if score_column == "score_source_cosine" else None


def _plain(value):
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def row_keys(rows: pd.DataFrame) -> list[str]:
    """:func:`~superscopes_nn.core.store.record_key` of every row of an unscored results frame."""
    return [record_key({k: _plain(v) for k, v in rec.items()}) for rec in rows.to_dict("records")]


def save_scores(rows: pd.DataFrame, scored: pd.DataFrame, run_dir) -> Path:
    """Write ``scored``'s ``score_*`` columns to ``run_dir/``:data:`SCORES_FILE`, keyed by the rows of
    ``rows`` (the same frame unscored, same order)."""
    cols = [c for c in scored.columns if str(c).startswith(SCORE_PREFIX)]
    path = Path(run_dir) / SCORES_FILE
    with open(path, "w", encoding="utf-8") as fh:
        for key, (_, r) in zip(row_keys(rows), scored[cols].iterrows()):
            fh.write(json.dumps({"key": key, **{c: finite_score(r[c]) for c in cols}}, ensure_ascii=False) + "\n")
    return path


def merge_scores(df: pd.DataFrame, run_dir) -> pd.DataFrame:
    """``df`` (a run's rows) with the ``score_*`` columns of ``run_dir/``:data:`SCORES_FILE` where it has one
    (NaN for a row it does not score); ``df`` unchanged without the file."""
    path = Path(run_dir) / SCORES_FILE
    if not path.is_file():
        return df
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            scores[rec.pop("key")] = rec
    cols = list(dict.fromkeys(c for rec in scores.values() for c in rec))
    keys = row_keys(df)
    return df.assign(**{c: [finite_score(scores.get(k, {}).get(c)) for k in keys] for c in cols})
