"""Loaders for published probe sets that are not shipped here: the Hopping Too Late CSV
(Biran et al. 2024) and PopQA, parsed and validated like :mod:`superscopes_nn.data.datasets`'s own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets
import pandas as pd

from .datasets import _STR, _STR_LIST, TWO_HOP_FIELDS, _check_columns, _existing_file, _parse_list, _to_dataset  # noqa: F401

# --------------------------------------------------------------------------- Hopping Too Late

HTL_REQUIRED = ("e1_label", "r1_template", "r2_template", "e2_label", "e3_label", "e2_aliases", "e3_aliases")
"""Columns the Hopping Too Late CSV must have (Biran et al., 2024; the file is not bundled)."""


def _fill(template: str, value: str, where: str) -> str:
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} at {where} must contain exactly one '{{}}' placeholder")
    return template.replace("{}", value)


def _first_hop_prompt(r1_phrase: str) -> str:
    """'the performer of Imagine' -> 'The performer of Imagine is'."""
    phrase = r1_phrase.strip()
    phrase = phrase[:1].upper() + phrase[1:]
    return phrase if phrase.endswith((" is", " was", " are")) else phrase + " is"


def _htl_row(row: dict, i: int, path: Path) -> dict:
    where = f"{path} row {i}"
    for col in HTL_REQUIRED[:5]:
        if not isinstance(row[col], str) or not row[col].strip():
            raise ValueError(f"column {col!r} at {where} must be a non-empty string, got {row[col]!r}")
    e1, e2, e3 = row["e1_label"], row["e2_label"], row["e3_label"]
    r1_phrase = _fill(row["r1_template"], e1, where)
    source = row.get("source_prompt")
    two_hop = source if isinstance(source, str) and source.strip() else _fill(row["r2_template"], r1_phrase, where)
    rid = row.get("id") or f"htl_{i}"
    return {
        "id": str(rid),
        "two_hop_prompt": two_hop,
        "first_hop_prompt": _first_hop_prompt(r1_phrase),
        "e1": e1,
        "r1": str(row.get("r1_label") or row["r1_template"]),
        "bridge": e2,
        "bridge_aliases": _parse_list(row["e2_aliases"], f"{where}, column 'e2_aliases'"),
        "r2": str(row.get("r2_label") or row["r2_template"]),
        "second_hop_prompt": _fill(row["r2_template"], e2, where),
        "answer": e3,
        "answer_aliases": _parse_list(row["e3_aliases"], f"{where}, column 'e3_aliases'"),
    }


def load_hopping_too_late_csv(path: str | Path) -> datasets.Dataset:
    """Map the official Hopping Too Late CSV to the two-hop columns of ``load_two_hop``.

    Assumed columns (others are ignored):

    - ``e1_label``, ``e2_label`` (bridge), ``e3_label`` (answer): entity names;
    - ``r1_template``: phrase for the first hop with one ``{}`` slot for e1,
      e.g. ``"the performer of {}"``;
    - ``r2_template``: prompt for the second hop with one ``{}`` slot, e.g.
      ``"The spouse of {} is"``;
    - ``e2_aliases``, ``e3_aliases``: JSON or Python list literals of strings;
    - optional: ``source_prompt`` (the composed two-hop prompt; when absent or
      empty it is ``r2_template`` filled with the filled ``r1_template``),
      ``id``, ``r1_label``, ``r2_label`` (relation names; default: the templates).

    ``first_hop_prompt`` is the filled r1 phrase, capitalised, with " is"
    appended; ``second_hop_prompt`` is ``r2_template`` filled with e2.
    """
    path = _existing_file(path, "Hopping Too Late CSV")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    _check_columns(list(frame.columns), HTL_REQUIRED, path)
    rows = [_htl_row(row, i, path) for i, row in enumerate(frame.to_dict("records"))]
    return _to_dataset(rows, TWO_HOP_FIELDS, path)


# --------------------------------------------------------------------------- PopQA

POPQA_REQUIRED = ("id", "subj", "prop", "question", "possible_answers")
POPQA_FIELDS = {
    "id": _STR,
    "subject": _STR,
    "relation": _STR,
    "object": _STR,
    "question": _STR,
    "possible_answers": _STR_LIST,
    "s_pop": datasets.Value("int64"),
}


def _popqa_row(row: Mapping, i: int) -> dict:
    pop = row.get("s_pop")
    return {
        "id": str(row["id"]),
        "subject": row["subj"],
        "relation": row["prop"],
        "object": row.get("obj") or "",
        "question": row["question"],
        "possible_answers": _parse_list(
            row["possible_answers"], f"PopQA row {i} (id {row['id']!r}), column 'possible_answers'"
        ),
        "s_pop": -1 if pop is None or pop == "" or pd.isna(pop) else int(pop),
    }


def parse_popqa_rows(rows: Iterable[Mapping] | pd.DataFrame | datasets.Dataset) -> datasets.Dataset:
    """Map raw PopQA rows (Mallen et al., 2023; ``akariasai/PopQA``) to the scoring schema.

    Input columns: id, subj, prop, obj, question, possible_answers (a JSON list
    as a string), s_pop, ... Output columns: id, subject, relation (prop),
    object (obj), question, possible_answers (list[str]), s_pop (int, -1 if absent).
    """
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    rows = list(rows)
    if not rows:
        raise ValueError("no rows in the PopQA input: the set is empty")
    for i, row in enumerate(rows):
        _check_columns(list(row), POPQA_REQUIRED, f"PopQA row {i}")
    return _to_dataset([_popqa_row(r, i) for i, r in enumerate(rows)], POPQA_FIELDS, "the PopQA input")


def load_popqa(split: str = "test") -> datasets.Dataset:
    """PopQA via ``datasets.load_dataset("akariasai/PopQA", split=split)``, parsed by ``parse_popqa_rows``.

    Needs the Hugging Face Hub or a local datasets cache of it.
    """
    return parse_popqa_rows(datasets.load_dataset("akariasai/PopQA", split=split))
