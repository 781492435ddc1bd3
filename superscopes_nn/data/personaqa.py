"""Persona facts in the layout of Li et al.'s PersonaQA (millicentli/verb_faithfulness, ``datasets/personaqa/``).

A PersonaQA folder holds one JSON file per attribute (``country.json``, ``favorite_food.json``,
...), each an object ``{"0": {"prompt": "My name is <name>.", "question": "<template with x>",
"target": "<answer>"}, ...}``. :func:`load_personaqa` reads such a folder into one row per
(attribute, persona), so a user with the real set (it carries no licence, so none is bundled;
:func:`superscopes_nn.data.external_data.load_personaqa_published` fetches it into the datasets
cache) runs the verbalizer-vs-target control on it unchanged; the tests use a small invented fixture.

:data:`INVENTED` is this project's own set in that layout (package data): 24 invented personas x
2 attributes (``country``, ``favorite_sport``), each answer drawn from 8 options both small models
know, assigned by a seeded shuffle (3 personas per option), so no model can know them beforehand.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pandas as pd

INVENTED = Path(str(resources.files("superscopes_nn").joinpath("data", "personaqa_invented")))
"""Invented persona facts in the PersonaQA layout (``superscopes_nn/data/personaqa_invented/``)."""

COLUMNS = ["attribute", "id", "name", "prompt", "question", "target"]
_NAME = re.compile(r"^\s*My name is (.+?)\.?\s*$")


def load_personaqa(folder: str | Path) -> pd.DataFrame:
    """Rows (attribute = file stem, id, name, prompt, question, target), sorted by attribute then id.

    ``name`` is the persona's name from ``"My name is <name>."`` (the whole prompt otherwise).
    A missing folder, an empty one, or an entry without ``prompt``/``question``/``target`` is a
    ValueError / FileNotFoundError naming the file and entry.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"PersonaQA folder not found: {folder}")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ValueError(f"no *.json attribute files in {folder}")
    return load_personaqa_files({path.stem: path for path in files})


def load_personaqa_files(files: dict[str, Path]) -> pd.DataFrame:
    """:func:`load_personaqa` on explicit ``{attribute: path}`` files (e.g. downloaded ones, whose cache
    names are no attribute names); same rows, same errors."""
    rows = []
    for attribute, path in files.items():
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold an object of entries keyed by id, got {type(data).__name__}")
        for key, entry in data.items():
            missing = [k for k in ("prompt", "question", "target") if not isinstance(entry, dict) or k not in entry]
            if missing:
                raise ValueError(f"{path} entry {key!r} lacks {missing}")
            if " x" not in f" {entry['question']} ".replace(",", " "):
                raise ValueError(f"{path} entry {key!r}: question {entry['question']!r} has no placeholder 'x'")
            m = _NAME.match(entry["prompt"])
            rows.append({"attribute": attribute, "id": int(key) if str(key).isdigit() else key,
                         "name": m.group(1) if m else entry["prompt"], "prompt": entry["prompt"],
                         "question": entry["question"], "target": entry["target"]})
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["attribute", "id"], key=lambda s: s.astype(str) if s.name == "attribute" else s,
                          kind="stable").reset_index(drop=True)
