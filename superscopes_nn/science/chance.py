"""Chance levels for best-of-K scores: shuffled sources and norm-matched random vectors.

A Superscopes success count is a *best-of-K* statistic: a (prompt, layer) counts when
*any* of K amplifiers gives a text that scores above a threshold against its own
source prompt. With K chances per item, some items pass by luck. This module says
how many would pass with nothing of the source in the vector.

Two nulls:

**Shuffled sources** (:func:`chance_table`, no generation): each item's texts are
scored against the reference of *another* item, a derangement of the items at the
same cell (same α and layer), and the best-of-K rule is applied to those scores.
Averaged over all derangements: a uniformly random derangement sends item i to each
other item with probability 1/(n-1), so each item's expected null success is the
mean over j != i of ``best_of_K(score(text_i, ref_j)) > threshold``; this is
computed exactly from the full text x reference score matrix (``n_derangements=None``),
or by sampling derangements (:func:`derangement`). Items that share a reference (two
queries whose answer is "United States", three personas from Egypt) stay in each other's
null: if the texts carry nothing of their item, this average is exactly the expected raw
rate; leaving same-reference pairs out would bias it (texts that always say the common
answer would score above chance).

**Norm-matched random vector** (:mod:`superscopes_nn.science.random_control`, needs generation):
the source vector is replaced by a random direction with the norm of what would have been
written, then amplified by the same α and patched into the same target.
:func:`random_rows` turns any resolved rows (a sweep, back-patching, CoT pairs) into their
random counterparts. Run those rows like any others and pass the scored frame as
``random_df``: the same best-of-K rule on them is the "nothing but norm" rate.

Each row of a chance table gives the raw rate, the shuffled null, raw minus null
("above null"), and optionally the random-vector rate, each with a bootstrap 95%
interval over items (the items, e.g. prompts, are resampled with their layers).

Scores against other references come from a *pair scorer*
``score_pairs(texts, refs) -> [len(texts), len(refs)] array``:
:func:`cosine_pairs` (MiniLM, the Superscopes rule), :func:`alias_pairs` (answer or
entity-name match) or :func:`rouge_pairs`. :func:`layer_chance` gives the per-layer and
best-of-layers table of a layer sweep (entity resolution).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .random_control import norm_matched_random, random_rows, random_vector_rows
from .scoring import MATCH_RULES, answer_match, embedding_matrix, rouge_l

__all__ = ["PairScorer", "alias_pairs", "chance_table", "cosine_pairs", "derangement", "format_chance", "item_table",
           "layer_chance", "norm_matched_random", "null_against", "random_rows", "random_vector_rows", "rouge_pairs"]

PairScorer = Callable[[list, list], np.ndarray]


# ------------------------------------------------------------------ pair scorers


def cosine_pairs(embedder=None) -> PairScorer:
    """``score(texts, refs)``: MiniLM cosine of every text with every reference (one encode call)."""

    def score(texts: list, refs: list) -> np.ndarray:
        return embedding_matrix(list(map(_str, texts)), list(map(_str, refs)), embedder=embedder)

    return score


def alias_pairs(rule: str = "word") -> PairScorer:
    """``score(texts, alias_lists)``: 1.0 where text i names any alias of reference j, else 0.0
    (:func:`superscopes_nn.science.scoring.answer_match` under ``rule``: ``word``, ``substring``, ``patchscopes``)."""
    if rule not in MATCH_RULES:
        raise ValueError(f"rule must be one of {MATCH_RULES}, got {rule!r}")

    def score(texts: list, refs: list) -> np.ndarray:
        out = np.zeros((len(texts), len(refs)))
        for j, r in enumerate(refs):
            aliases = [r] if isinstance(r, str) else list(r)
            for i, t in enumerate(texts):
                out[i, j] = float(answer_match(_str(t), aliases, rule))
        return out

    return score


def rouge_pairs() -> PairScorer:
    """``score(texts, refs)``: ROUGE-L F of every text with every reference."""

    def score(texts: list, refs: list) -> np.ndarray:
        texts = list(map(_str, texts))
        flat = rouge_l([t for t in texts for _ in refs], [r for _ in texts for r in refs])
        return np.asarray(flat, dtype=float).reshape(len(texts), len(refs))

    return score


def _str(t) -> str:
    return t if isinstance(t, str) else ""


def blank(t) -> bool:
    """Nothing said: a missing, empty or whitespace-only text (scores 0, as in ``add_scores``)."""
    return not isinstance(t, str) or t.strip() == ""


# ------------------------------------------------------------------ derangements


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` with no fixed point (rejection sampling)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


# ------------------------------------------------------------------ the table


def _ref_lookup(df: pd.DataFrame, item: str, reference) -> Callable:
    if isinstance(reference, str):
        if reference == item:
            return lambda k: k
        if reference not in df.columns:
            raise ValueError(f"reference column {reference!r} not in the frame (columns: {list(df.columns)})")
        table = df.drop_duplicates(item).set_index(item)[reference].to_dict()
        return table.__getitem__
    if isinstance(reference, Mapping):
        return lambda k: reference[k]
    if callable(reference):
        return reference
    raise ValueError(f"reference must be a column name, a dict item -> reference or a callable, got {reference!r}")


def _cells(df: pd.DataFrame, items: list, item: str, text: str, by: list, choice: str) -> dict:
    """``{(group key, choice value): [texts in item order]}``; a missing row is an empty text."""
    dup = df.duplicated(by + [choice, item], keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        raise ValueError(f"more than one row per (groups {by}, {choice!r}, item): e.g. "
                         f"{ {c: first[c] for c in by + [choice, item]} }; add the distinguishing column to by=")
    pos = {k: i for i, k in enumerate(items)}
    out: dict = {}
    for key, g in df.groupby(by + [choice], sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        texts = [""] * len(items)
        for it, t in zip(g[item], g[text]):
            texts[pos[it]] = t if isinstance(t, str) else ""
        out[(key[:-1], key[-1])] = texts
    return out


def _score_cells(cells: dict, refs: list, score_pairs: PairScorer) -> dict:
    """``{cell: [n, n] scores}`` (text of item i vs reference of item j) from ONE scorer call."""
    keys = list(cells)
    flat = [t for k in keys for t in cells[k]]
    mat = np.asarray(score_pairs(flat, refs), dtype=float) if flat else np.zeros((0, len(refs)))
    n = len(refs)
    if mat.shape != (len(flat), n):
        raise ValueError(f"score_pairs returned shape {mat.shape}, expected {(len(flat), n)}")
    empty = np.array([blank(t) for t in flat], dtype=bool)
    mat[empty] = 0.0  # nothing said scores 0, as in add_scores
    return {k: mat[i * n:(i + 1) * n] for i, k in enumerate(keys)}


def _natural(key: tuple) -> tuple:
    """Numbers before strings, numbers in numeric order (layer 2 before layer 10)."""
    return tuple((0, float(v), "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0.0, str(v))
                 for v in key)


def _best(scores: dict, group: tuple, choices: list) -> np.ndarray | None:
    mats = [scores[(group, c)] for c in choices if (group, c) in scores]
    return np.max(np.stack(mats), axis=0) if mats else None


def bootstrap_interval(per_item: np.ndarray, n_boot: int, level: float, rng: np.random.Generator) -> tuple:
    """Bootstrap interval of per_item.sum(0) / per_item.size over resampled items (rows)."""
    n = per_item.shape[0]
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    stats = w @ per_item.sum(axis=1) / per_item.size
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def chance_table(df: pd.DataFrame, score_pairs: PairScorer, *, threshold: float | None,
                 reference="source_prompt", item: str = "source_prompt", text: str = "interpretation",
                 by: Sequence[str] = ("source_layer",), choice: str = "alpha",
                 arms: Mapping[str, Sequence | None] | None = None, per_choice: bool = True,
                 random_df: pd.DataFrame | None = None, n_boot: int = 2000, n_derangements: int | None = None,
                 seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Best-of-K success rates beside their shuffled-source (and random-vector) chance levels.

    An *item* (``item`` column, e.g. the source prompt) succeeds in a group (``by``, e.g. a
    layer) for an *arm* (a set of ``choice`` values, e.g. alphas 3..15) when the best
    score over the arm's choices of its ``text`` against its own ``reference`` exceeds
    ``threshold`` (``None``: the best score itself is averaged instead of a 0/1 success).

    - ``score_pairs(texts, refs)``: [len(texts), len(refs)] scores (:func:`cosine_pairs`,
      :func:`alias_pairs`); missing, empty or whitespace-only texts score 0 (:func:`blank`).
    - ``reference``: a column of ``df`` (one value per item), a dict item -> reference or a
      callable; the default scores against the source prompt (the Superscopes rule).
    - ``arms``: ``{name: choice values or None (all)}``; default one arm of all choices.
      ``per_choice``: also one arm per single choice value (e.g. per α).
    - ``random_df``: the same grid run with norm-matched random vectors
      (:func:`random_vector_rows`), scored by the same rule: adds ``random`` and
      ``above_random`` columns.
    - ``n_derangements``: None = exact average over all derangements, an int = that many
      sampled derangements (same permutation for every group and choice).

    One row per arm and group, plus an ``all`` row per arm (every group; items resampled
    with all their groups). Columns: ``arm``, ``choices``, ``k``, the ``by`` columns,
    ``n_items``, ``n`` (item x group units), ``raw``, ``null``, ``above`` (= raw - null)
    [, ``random``, ``above_random``] as rates (or mean best scores), each with ``_lo`` /
    ``_hi`` bootstrap bounds (``n_boot`` resamples of items, ``level``), and
    ``raw_count`` / ``null_count`` / ``random_count`` (rate x n).
    """
    by = list(by)
    missing = [c for c in [item, text, choice, *by] if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}")
    items = sorted(df[item].unique(), key=str)
    if len(items) < 2:
        raise ValueError(f"a shuffled-source null needs at least 2 items, got {len(items)}")
    ref_of = _ref_lookup(df, item, reference)
    refs = [ref_of(k) for k in items]
    scores = _score_cells(_cells(df, items, item, text, by, choice), refs, score_pairs)
    rscores = None
    if random_df is not None:
        extra = sorted(set(random_df[item]) - set(items), key=str)
        if extra:
            raise ValueError(f"random_df has items not in df: {extra[:5]}")
        rscores = _score_cells(_cells(random_df, items, item, text, by, choice), refs, score_pairs)
    groups = sorted({g for g, _ in scores}, key=_natural)
    all_choices = sorted({c for _, c in scores}, key=lambda v: (str(type(v)), v))
    arm_list = [(name, all_choices if vals is None else [c for c in all_choices if c in set(vals)])
                for name, vals in (arms or {"any": None}).items()]
    if per_choice:
        arm_list += [(f"{choice}={c:g}" if isinstance(c, float) else f"{choice}={c}", [c]) for c in all_choices]
    n = len(items)
    rng = np.random.default_rng(seed)
    perms = None if n_derangements is None else [derangement(n, rng) for _ in range(int(n_derangements))]
    eye = np.eye(n, dtype=bool)
    records = []
    for name, chosen in arm_list:
        if not chosen:
            raise ValueError(f"arm {name!r} selects no {choice} value present in the frame ({all_choices})")
        raw = np.zeros((n, len(groups)))
        null = np.zeros((n, len(groups)))
        rnd = np.zeros((n, len(groups)))
        for gi, g in enumerate(groups):
            best = _best(scores, g, chosen)
            x = best > threshold if threshold is not None else best
            x = x.astype(float)
            raw[:, gi] = np.diag(x)
            if perms is None:
                null[:, gi] = np.where(eye, 0.0, x).sum(axis=1) / (n - 1)
            else:
                null[:, gi] = np.mean([x[np.arange(n), p] for p in perms], axis=0)
            if rscores is not None:
                rb = _best(rscores, g, chosen)
                if rb is None:
                    raise ValueError(f"random_df has no rows for group {g} and {choice} in {chosen}")
                rnd[:, gi] = np.diag(rb > threshold if threshold is not None else rb).astype(float)
        blocks = [(dict(zip(by, g)), [gi]) for gi, g in enumerate(groups)]
        if by:
            blocks.append(({c: "all" for c in by}, list(range(len(groups)))))
        for labels, cols in blocks:
            rec = {"arm": name, "choices": ",".join(f"{c:g}" if isinstance(c, float) else str(c) for c in chosen),
                   "k": len(chosen), **labels, "n_items": n, "n": n * len(cols)}
            parts = {"raw": raw[:, cols], "null": null[:, cols], "above": raw[:, cols] - null[:, cols]}
            if rscores is not None:
                parts.update(random=rnd[:, cols], above_random=raw[:, cols] - rnd[:, cols])
            for key, vals in parts.items():
                rec[key] = float(vals.mean())
                rec[f"{key}_lo"], rec[f"{key}_hi"] = bootstrap_interval(vals, n_boot, level, np.random.default_rng(seed + 1))
            for key in ("raw", "null", "random"):
                if key in parts:
                    rec[f"{key}_count"] = rec[key] * rec["n"]
            records.append(rec)
    return pd.DataFrame.from_records(records)


def format_chance(table: pd.DataFrame, counts: bool = True) -> pd.DataFrame:
    """A printable copy: ``raw``, ``null``, ``above`` (and ``random``) as "x [lo, hi]" strings
    (counts out of ``n`` when ``counts``, else rates)."""
    out = table.drop(columns=[c for c in table.columns if c.endswith(("_lo", "_hi", "_count"))]).copy()
    for key in ("raw", "null", "above", "random", "above_random"):
        if key not in table:
            continue
        scale = table["n"] if counts else 1.0
        out[key] = [f"{v * s:.1f} [{lo * s:.1f}, {hi * s:.1f}]" if counts else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"
                    for v, lo, hi, s in zip(table[key], table[f"{key}_lo"], table[f"{key}_hi"],
                                            scale if counts else [1.0] * len(table))]
    return out


def item_table(df: pd.DataFrame, score_pairs: PairScorer, *, threshold: float, reference="source_prompt",
               item: str = "source_prompt", text: str = "interpretation",
               cells: Sequence[str] = ("source_layer", "alpha")) -> pd.DataFrame:
    """Per item: how many of its cells (e.g. layer x α) pass ``threshold`` against its own reference
    (``raw``) and, on average, against another item's (``null``, the exact derangement average);
    ``above`` = raw - null. Sorted by ``above``, best first: a prompt chosen from this table for a
    demonstration is chosen by its margin over chance, not by one lucky cell."""
    cells = list(cells)
    items = sorted(df[item].unique(), key=str)
    if len(items) < 2:
        raise ValueError(f"a shuffled-source null needs at least 2 items, got {len(items)}")
    ref_of = _ref_lookup(df, item, reference)
    scores = _score_cells(_cells(df, items, item, text, cells[:-1], cells[-1]), [ref_of(k) for k in items],
                          score_pairs)
    n = len(items)
    raw, null = np.zeros(n), np.zeros(n)
    for m in scores.values():
        x = (m > threshold).astype(float)
        raw += np.diag(x)
        null += (x.sum(axis=1) - np.diag(x)) / (n - 1)
    out = pd.DataFrame({item: items, "cells": len(scores), "raw": raw, "null": null, "above": raw - null})
    return out.sort_values(["above", "raw"], ascending=False, kind="stable").reset_index(drop=True)


def null_against(df: pd.DataFrame, others: Sequence, score_pairs: PairScorer, *, threshold: float,
                 text: str = "interpretation") -> np.ndarray:
    """Per row: the share of ``others`` (references of other items, e.g. the other Figure 3 prompts)
    that the row's text passes; the chance level of one prompt's grid without running the others
    (the marginal of a derangement: the row's text against a uniformly drawn other reference)."""
    others = list(others)
    if not others:
        raise ValueError("null_against needs at least one other reference")
    texts = [t if isinstance(t, str) else "" for t in df[text]]
    m = np.asarray(score_pairs(texts, others), dtype=float)
    m[[blank(t) for t in texts]] = 0.0
    return (m > threshold).mean(axis=1)


def layer_chance(df: pd.DataFrame, score_pairs: PairScorer, *, threshold: float | None, reference,
                 item: str, text: str = "interpretation", layer: str = "source_layer", n_boot: int = 2000,
                 n_derangements: int | None = None, seed: int = 0,
                 random_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-layer rates and the best-of-layers score of a one-text-per-(item, layer) sweep, each beside
    its shuffled-item chance level (item i's texts scored against item j's ``reference``, j a
    derangement of the items; exact average over derangements unless ``n_derangements``).

    Rows: ``scope == "layer"``: one per ``layer`` value (``raw``: mean over items of the score, or of
    ``score > threshold``); ``scope == "best of layers"``: one row, the best over all layers per item
    (a best-of-K score, K = number of layers). Columns as :func:`chance_table` (``raw``, ``null``,
    ``above`` with ``_lo`` / ``_hi`` bootstrap bounds over items). ``random_df``: the same sweep
    run with norm-matched random vectors (:func:`random_rows`), adds ``random`` / ``above_random``.
    """
    one = df.assign(_one="_")
    rone = None if random_df is None else random_df.assign(_one="_")
    per = chance_table(one, score_pairs, threshold=threshold, reference=reference, item=item, text=text,
                       by=(layer,), choice="_one", arms={"layer": None}, per_choice=False, n_boot=n_boot,
                       n_derangements=n_derangements, seed=seed, random_df=rone)
    per = per[per[layer] != "all"].assign(scope="layer")
    best = chance_table(df, score_pairs, threshold=threshold, reference=reference, item=item, text=text, by=(),
                        choice=layer, arms={"best of layers": None}, per_choice=False, n_boot=n_boot,
                        n_derangements=n_derangements, seed=seed, random_df=random_df).assign(scope="best of layers")
    best[layer] = "best"
    out = pd.concat([per, best], ignore_index=True)
    return out[["scope", layer] + [c for c in out.columns if c not in ("scope", layer, "arm")]]

