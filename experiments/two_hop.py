"""Two-hop queries shared by the back-patching, multi-hop CoT and bridge-resolution experiments:
loading, aliases and the answer test."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from superscopes_nn.scoring import MATCH_RULES, answer_match

__all__ = ["MATCH_RULES", "QUERY_FIELDS", "load_queries", "alias_match", "answer_aliases", "bridge_aliases"]

QUERY_FIELDS = ("id", "two_hop_prompt", "first_hop_prompt", "e1", "r1", "bridge", "bridge_aliases", "r2",
                "second_hop_prompt", "answer", "answer_aliases")


def load_queries(queries=None, limit: int | None = None, stratify: bool = False) -> pd.DataFrame:
    """Two-hop queries as a DataFrame with :data:`QUERY_FIELDS` (default ``load_two_hop()``).

    ``queries``: None, a path to a JSONL file, a ``datasets.Dataset``, a DataFrame or a
    list of dicts. ``limit`` keeps the first ``limit`` queries; with ``stratify`` it takes
    them round robin over the (r1, r2) relation pairs, so a small subset covers every
    relation pair. Duplicate ids keep the first.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if queries is None or isinstance(queries, (str, Path)):
        from superscopes_nn.datasets import load_two_hop

        queries = load_two_hop(queries)
    if hasattr(queries, "to_pandas"):
        queries = queries.to_pandas()
    df = queries.copy() if isinstance(queries, pd.DataFrame) else pd.DataFrame([dict(q) for q in queries])
    missing = [f for f in QUERY_FIELDS if f not in df.columns]
    if missing:
        raise ValueError(f"two-hop queries lack fields {missing}; have {list(df.columns)}")
    for col in ("bridge_aliases", "answer_aliases"):
        df[col] = [list(a) if a is not None and not isinstance(a, float) else [] for a in df[col]]
    df = df[list(QUERY_FIELDS)].drop_duplicates("id").reset_index(drop=True)
    if limit is not None:
        if stratify:
            rank = df.groupby(["r1", "r2"], sort=False).cumcount()
            df = df.iloc[rank.sort_values(kind="stable").index]
        df = df.head(limit).reset_index(drop=True)
    if df.empty:
        raise ValueError("no two-hop queries given")
    return df


def alias_match(text, aliases: Iterable[str], rule: str = "word") -> bool:
    """:func:`superscopes_nn.scoring.answer_match` under ``rule`` (:data:`MATCH_RULES`; ``word`` =
    case-insensitive whole words, aliases of length <= 1 ignored); a missing text (an errored row)
    never matches."""
    return answer_match(text, list(aliases), rule)


def answer_aliases(q) -> list[str]:
    return [q["answer"], *list(q["answer_aliases"])]


def bridge_aliases(q) -> list[str]:
    return [q["bridge"], *list(q["bridge_aliases"])]
