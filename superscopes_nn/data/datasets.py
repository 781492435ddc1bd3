"""Probe sets for Patchscopes / Superscopes experiments, as Hugging Face ``datasets``.

Every loader validates its input and fails fast: a missing file is a
FileNotFoundError naming the path, a missing column a ValueError naming the
column and the columns found, an empty file a ValueError naming the file.

The project's own data ships inside the package (``superscopes_nn/data/``, found with
``importlib.resources``, so a wheel or ``pip install .`` has it too)::

    >>> from superscopes_nn.data.datasets import load_entities, load_two_hop
    >>> ents = load_entities()        # name, type, description, aliases
    >>> ents[0]["name"]
    'Alexander the Great'
    >>> hops = load_two_hop()         # id, two_hop_prompt, ..., answer, answer_aliases

Published sets (:mod:`superscopes_nn.data.external_data`: PopQA, Hopping Too Late, PersonaQA
through ``datasets``, cached) and the two reproductions' source files, which ship as package data
too (provenance and sha256 in ``data/README.md``)::

    >>> lre = load_lre(kind="factual", relations=["country_capital_city"])
    >>> sorted(set(lre["relation"]))
    ['country_capital_city']
    >>> fig3 = load_fig3_prompts()          # [(prompt, paper_last_token), ...]
    >>> fig3[0]
    ('Pink Floyd', 'loyd')

The Patchscopes LRE files (``patchscopes_lre/<kind>/<relation>.tsv.gz``, gzip of the upstream
bytes) and the Figure 3 prompt list are read from ``data_dir()``: ``$SUPERSCOPES_SHARED_DATA``
when set (an override: a folder with the same layout, ``.tsv`` or ``.tsv.gz``), else ``DATA_DIR``.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import datasets
import pandas as pd

__all__ = [
    "DATA_DIR",
    "SHARED_DATA_ENV",
    "data_dir",
    "ENTITY_FIELDS",
    "TWO_HOP_FIELDS",
    "LRE_KINDS",
    "load_entities",
    "load_two_hop",
    "load_lre",
    "load_fig3_prompts",
    "NEXT_TOKEN_SAMPLE",
    "load_sample",
]

DATA_DIR = Path(str(resources.files("superscopes_nn").joinpath("data")))
"""The package data: entities.jsonl, two_hop.jsonl, next_token_sample.txt (see data/README.md)."""

SHARED_DATA_ENV = "SUPERSCOPES_SHARED_DATA"
"""Environment variable overriding ``data_dir()``: a folder holding patchscopes_lre/ and superscopes_fig3_prompts.tsv."""


def data_dir() -> Path:
    """Where the LRE files and the Fig 3 prompt list are read: ``$SUPERSCOPES_SHARED_DATA`` when set,
    else the package data ``DATA_DIR``. A set variable that names no directory is a one-line
    FileNotFoundError naming its value."""
    env = os.environ.get(SHARED_DATA_ENV)
    if not env:
        return DATA_DIR
    path = Path(env).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder not found: {SHARED_DATA_ENV}={env!r} is not a directory")
    return path


STRING = datasets.Value("string")
STRING_LIST = datasets.List(datasets.Value("string"))

ENTITY_FIELDS = {"name": STRING, "type": STRING, "description": STRING, "aliases": STRING_LIST}
TWO_HOP_FIELDS = {
    "id": STRING,
    "two_hop_prompt": STRING,
    "first_hop_prompt": STRING,
    "e1": STRING,
    "r1": STRING,
    "bridge": STRING,
    "bridge_aliases": STRING_LIST,
    "r2": STRING,
    "second_hop_prompt": STRING,
    "answer": STRING,
    "answer_aliases": STRING_LIST,
}
LRE_KINDS = ("factual", "commonsense")


# --------------------------------------------------------------------------- shared helpers


def existing_file(path: str | Path, what: str, hint: str = "") -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}" + (f"; {hint}" if hint else ""))
    return path


def check_columns(found: Sequence[str], required: Iterable[str], source: object) -> None:
    for col in required:
        if col not in found:
            raise ValueError(f"column {col!r} not found in {source}; columns are {list(found)}")


def to_dataset(rows: list[dict], fields: Mapping[str, object], source: object) -> datasets.Dataset:
    if not rows:
        raise ValueError(f"no rows in {source}: the set is empty")
    return datasets.Dataset.from_list(
        [{k: row[k] for k in fields} for row in rows], features=datasets.Features(dict(fields))
    )


def _check_types(row: dict, fields: Mapping[str, object], where: str) -> None:
    for key, feature in fields.items():
        value = row[key]
        if feature is STRING_LIST:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"field {key!r} at {where} must be a list of strings, got {value!r}")
        elif not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {key!r} at {where} must be a non-empty string, got {value!r}")


def _read_jsonl(path: Path, fields: Mapping[str, object]) -> list[dict]:
    """Parse a JSON Lines file; every object must hold every key of ``fields`` with the right type."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"invalid JSON at {where}: {e.msg}: {line.strip()[:80]!r}") from e
            if not isinstance(row, dict):
                raise ValueError(f"line {where} is not a JSON object: {line.strip()[:80]!r}")
            check_columns(list(row), fields, where)
            _check_types(row, fields, where)
            rows.append(row)
    return rows


def parse_list(value: object, where: str) -> list[str]:
    """An alias list stored as a JSON or Python list literal ('["a", "b"]' or "['a', 'b']").

    Missing values (NaN, '') give []; a bare string that is not a list literal
    gives a one-element list.
    """
    if isinstance(value, list):
        items = value
    elif value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == "":
        return []
    else:
        text = str(value).strip()
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            try:
                items = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                if text.startswith(("[", "(", "{")):
                    raise ValueError(f"cannot parse the list {text!r} at {where}") from None
                items = [text]
        if isinstance(items, str):
            items = [items]
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"expected a list of strings at {where}, got {value!r}")
    return list(items)


# --------------------------------------------------------------------------- project data


def load_entities(path: str | Path | None = None) -> datasets.Dataset:
    """Entities for entity-description Patchscopes, from the package's ``data/entities.jsonl``.

    Columns: ``name`` (str), ``type`` (str), ``description`` (str),
    ``aliases`` (list[str], may be empty). One row per JSON line.
    """
    path = existing_file(DATA_DIR / "entities.jsonl" if path is None else path, "entities")
    return to_dataset(_read_jsonl(path, ENTITY_FIELDS), ENTITY_FIELDS, path)


def load_two_hop(path: str | Path | None = None) -> datasets.Dataset:
    """Two-hop queries ``e1 --r1--> bridge --r2--> answer``, from the package's ``data/two_hop.jsonl``.

    Columns (all str except the two alias lists, list[str]): id,
    two_hop_prompt, first_hop_prompt, e1, r1, bridge, bridge_aliases, r2,
    second_hop_prompt, answer, answer_aliases.
    """
    path = existing_file(DATA_DIR / "two_hop.jsonl" if path is None else path, "two-hop")
    return to_dataset(_read_jsonl(path, TWO_HOP_FIELDS), TWO_HOP_FIELDS, path)


# --------------------------------------------------------------------------- Patchscopes LRE

LRE_REQUIRED = ("subject", "object", "prompt_target")
LRE_OPTIONAL = {
    "sample_id": datasets.Value("int64"),
    "position_target": datasets.Value("int64"),
    "target_baseline": STRING,
    "prompt_source": STRING,
    "position_source": datasets.Value("int64"),
}
"""Columns of the Patchscopes LRE attribute files kept when present (the rest, baseline generations, is dropped)."""


LRE_PATTERNS = ("*.tsv.gz", "*.tsv")
"""A relation file is ``<relation>.tsv`` or its gzip ``<relation>.tsv.gz`` (the shipped form); a plain one wins."""


def _relation(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".tsv")


def _lre_files(root: Path, kinds: Sequence[str], relations: Sequence[str] | None) -> list[tuple[str, Path]]:
    found = {(kind, _relation(p)): p for kind in kinds for pattern in LRE_PATTERNS
             for p in sorted((root / kind).glob(pattern))}
    if not found:
        raise ValueError(f"no <kind>/<relation>.tsv(.gz) files under {root} for kind(s) {list(kinds)}")
    if relations is None:
        return [(kind, p) for (kind, _), p in sorted(found.items())]
    if isinstance(relations, str):
        relations = [relations]
    available = sorted({rel for _, rel in found})
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise ValueError(f"unknown relation(s) {unknown} under {root} (kinds {list(kinds)}); available: {available}")
    return [(kind, p) for (kind, rel), p in sorted(found.items()) if rel in set(relations)]


def _read_lre_tsv(kind: str, path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", index_col=0, dtype=str, keep_default_na=False)
    check_columns(list(frame.columns), LRE_REQUIRED, path)
    if frame.empty:
        raise ValueError(f"no rows in {path}: the set is empty")
    out = pd.DataFrame({"relation": _relation(path), "kind": kind}, index=frame.index)
    for col in LRE_REQUIRED:
        out[col] = frame[col]
    for col, feature in LRE_OPTIONAL.items():
        if col in frame.columns:
            out[col] = _integers(frame[col], path) if feature.dtype == "int64" else frame[col]
    return out.reset_index(drop=True)


def _integers(column: pd.Series, path: Path) -> pd.Series:
    try:
        return pd.to_numeric(column).astype("int64")
    except (ValueError, TypeError) as e:
        raise ValueError(f"column {column.name!r} in {path} must hold integers: {e}") from None


def load_lre(
    root: str | Path | None = None, kind: str | None = None, relations: Sequence[str] | None = None
) -> datasets.Dataset:
    """The Patchscopes LRE attribute-extraction files ``root/{factual,commonsense}/<relation>.tsv``.

    Each TSV (first column an unnamed row index) has one row per (subject,
    source context) with columns sample_id, prompt_target (the template,
    e.g. "The capital city of x"), position_target, target_baseline, object,
    subject, generations_baseline, generations_baseline_str,
    is_correct_baseline, prompt_source, position_source, source_cropped_toks.

    Output columns: relation (file stem), kind, subject, object, prompt_target,
    and, when present, sample_id, position_target, target_baseline,
    prompt_source (may be ''), position_source. ``kind`` restricts to one of
    ``LRE_KINDS``; ``relations`` to some file stems. ``root`` defaults to
    ``data_dir() / "patchscopes_lre"`` (the shipped files unless ``$SUPERSCOPES_SHARED_DATA`` is set).
    """
    root = data_dir() / LRE_DIR if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LRE root directory not found: {root}")
    if kind is not None and kind not in LRE_KINDS:
        raise ValueError(f"unknown LRE kind {kind!r}; choose from {LRE_KINDS}")
    frames = [_read_lre_tsv(k, p) for k, p in _lre_files(root, LRE_KINDS if kind is None else (kind,), relations)]
    frame = pd.concat(frames, ignore_index=True)
    kept = [c for c in LRE_OPTIONAL if c in frame.columns]
    if frame[kept].isna().any().any():
        bad = frame[kept].columns[frame[kept].isna().any()].tolist()
        raise ValueError(f"column(s) {bad} are missing from some LRE files under {root}; files must share columns")
    features = {"relation": STRING, "kind": STRING, **{c: STRING for c in LRE_REQUIRED}}
    features |= {c: LRE_OPTIONAL[c] for c in kept}
    return datasets.Dataset.from_pandas(
        frame[list(features)], features=datasets.Features(features), preserve_index=False
    )


# --------------------------------------------------------------------------- Superscopes Figure 3

FIG3_FILE = "superscopes_fig3_prompts.tsv"
LRE_DIR = "patchscopes_lre"


def load_fig3_prompts(
    path: str | Path | None = None, as_frame: bool = False
) -> list[tuple[str, str]] | pd.DataFrame:
    """The source prompts of the Superscopes paper's Figure 3.

    The file is a TSV with one ``prompt<TAB>paper_last_token`` per line (the
    last token as the paper's Llama-2 tokenizer split it); lines starting with
    '#' (after any indentation) and blank lines are skipped; fields are stripped.
    Returns ``[(prompt, paper_token), ...]``, or a DataFrame with columns prompt,
    paper_token when ``as_frame``. This is the one parser of the file (experiments
    call it too).
    """
    path = existing_file(data_dir() / FIG3_FILE if path is None else path, "Superscopes Figure 3 prompt",
                          f"it ships as {DATA_DIR / FIG3_FILE}; ${SHARED_DATA_ENV} or path= override it")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise ValueError(f"line {path}:{lineno} must be 'prompt<TAB>paper_last_token', got {line!r}")
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise ValueError(f"no prompts in {path}: the set is empty")
    return pd.DataFrame(pairs, columns=["prompt", "paper_token"]) if as_frame else pairs


NEXT_TOKEN_SAMPLE = DATA_DIR / "next_token_sample.txt"
METHODS = ("patchscope", "logit_lens")


def load_sample(path: Path | str = NEXT_TOKEN_SAMPLE, limit: int | None = None) -> list[str]:
    """The sentences of the next-token sample (one per line, blank lines skipped)."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        lines = lines[:limit]
    return lines
