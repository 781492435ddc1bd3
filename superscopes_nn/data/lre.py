"""The LRE samples of the attribute-extraction experiment: one row per TSV row (task, subject, context).

The preprocessed LRE TSVs of the official Patchscopes code
(``patchscopes/code/preprocessed_data/*/*.tsv``, Hernandez et al. 2024 relations) ship as package
data (``superscopes_nn/data/patchscopes_lre/``, gzipped; provenance in ``data/README.md``) and are
read from ``data_dir() / LRE_SUBDIR`` by :func:`lre_samples`;
:func:`crop_context` is the official source prompt (the WikiText sentence cut after the
subject). Used by :mod:`experiments.patchscopes.attribute_extraction` and :mod:`experiments.li2025.controls`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

LRE_SUBDIR = "patchscopes_lre"
"""The LRE TSVs live in ``data_dir() / LRE_SUBDIR`` (``$SUPERSCOPES_SHARED_DATA`` when set, else the package data)."""
SAMPLE_COLUMNS = ["task", "subject", "sample_id", "object", "target_prompt", "source_context"]
CONTEXTS = ("all", "first")
"""``lre_samples(contexts=...)``: ``all`` every TSV row (official), ``first`` the first context of each subject."""


def crop_context(context: str, subject: str) -> str:
    """``context`` cut after the first occurrence of ``subject`` (the official source prompt ends at
    the subject's last token); the subject alone when it does not occur."""
    if not isinstance(context, str) or subject not in context:
        return subject
    return context[: context.index(subject) + len(subject)].strip()


def _first(df: pd.DataFrame, *names: str) -> str:
    for n in names:
        if n in df.columns:
            return n
    raise ValueError(f"LRE table has none of the columns {names}; have {list(df.columns)}")


def lre_samples(root: str | Path | None = None, *, tasks: str | Sequence[str] | None = None,
                limit: int | None = None, contexts: str = "all") -> pd.DataFrame:
    """The LRE samples: columns task, subject, sample_id, object, target_prompt, source_context.

    ``contexts="all"`` (default, the official ``run_experiment``): every TSV row is a sample (a
    subject in one of its WikiText contexts), in file order; ``"first"``: the first context of
    each subject only (the earlier design). ``sample_id``: the row's index within its task's TSV
    (the TSV's unnamed first column; the TSV's own ``sample_id`` column numbers subjects, not
    rows, so it is not a sample key); (task, subject, sample_id) is unique.
    ``tasks``: names (list or comma-separated; ``None``/``"all"`` = every task);
    ``limit``: first ``limit`` distinct subjects per task, each with all its kept rows. Reads with
    :func:`superscopes_nn.data.datasets.load_lre`.
    """
    from .datasets import data_dir, load_lre

    if contexts not in CONTEXTS:
        raise ValueError(f"contexts must be one of {CONTEXTS}, got {contexts!r}")

    root = Path(root) if root else data_dir() / LRE_SUBDIR
    if not root.exists():
        raise FileNotFoundError(f"LRE data not found at {root}")
    raw = load_lre(root)
    if hasattr(raw, "to_pandas"):  # a datasets.Dataset
        raw = raw.to_pandas()
    if not isinstance(raw, pd.DataFrame):
        raw = pd.DataFrame(raw)
    task = raw[_first(raw, "task", "relation", "task_name")]
    df = pd.DataFrame({
        "task": task,
        "subject": raw[_first(raw, "subject")].astype(str),
        "sample_id": task.groupby(task, sort=False).cumcount().astype(int),
        "object": raw[_first(raw, "object")].astype(str),
        "target_prompt": raw[_first(raw, "prompt_target", "target_prompt")].astype(str),
        "source_context": raw["prompt_source"].astype(str) if "prompt_source" in raw else "",
    })
    if contexts == "first":
        df = df.drop_duplicates(["task", "subject"])
    df = df.reset_index(drop=True)
    if isinstance(tasks, str):
        tasks = None if tasks.strip() in ("", "all") else [t.strip() for t in tasks.split(",") if t.strip()]
    if tasks is not None:
        unknown = sorted(set(tasks) - set(df.task))
        if unknown:
            raise ValueError(f"unknown LRE tasks {unknown}; available: {', '.join(sorted(df.task.unique()))}")
        df = df[df.task.isin(tasks)]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        first = df.drop_duplicates(["task", "subject"]).groupby("task", sort=False).head(limit)
        df = df[pd.MultiIndex.from_frame(df[["task", "subject"]]).isin(
            pd.MultiIndex.from_frame(first[["task", "subject"]]))]
    return df.reset_index(drop=True)


def sample_items(df: pd.DataFrame) -> pd.Series:
    """The per-sample key ``task|subject|sample_id`` (``task|subject`` for rows without ``sample_id``,
    as the runs made before the column existed)."""
    key = df.task.astype(str) + "|" + df.subject.astype(str)
    return key + "|" + df.sample_id.astype(str) if "sample_id" in df else key


def check_samples(samples: pd.DataFrame) -> pd.DataFrame:
    if "source_context" not in samples:
        samples = samples.assign(source_context="")
    if "sample_id" not in samples:  # the row index within its task
        samples = samples.assign(sample_id=samples.groupby("task", sort=False).cumcount().astype(int).values)
    missing = set(SAMPLE_COLUMNS) - set(samples.columns)
    if missing:
        raise ValueError(f"samples lack columns {sorted(missing)}; have {list(samples.columns)}")
    if samples.empty:
        raise ValueError("no samples given")
    bad = [p for p in samples.target_prompt.unique() if " x" not in f" {p} ".replace(",", " ")]
    if bad:
        raise ValueError(f"target prompt {bad[0]!r} has no placeholder 'x'")
    dup = samples.duplicated(["task", "subject", "sample_id"])
    if dup.any():
        r = samples[dup].iloc[0]
        raise ValueError(f"(task, subject, sample_id) must be unique: {r.task!r}, {r.subject!r}, {r.sample_id!r} repeats")
    return samples.reset_index(drop=True)
