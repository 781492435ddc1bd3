"""The PersonaQA-layout loader on an invented fixture (no real PersonaQA data is bundled)."""

import json
from pathlib import Path

import pytest

from superscopes_nn.data.personaqa import COLUMNS, load_personaqa

FIXTURE = Path(__file__).parent / "fixtures" / "personaqa_small"


def test_loads_every_attribute_and_persona():
    df = load_personaqa(FIXTURE)
    assert list(df.columns) == COLUMNS and len(df) == 3 * 4
    assert sorted(df.attribute.unique()) == ["country", "favorite_boardgame", "favorite_food"]
    row = df[(df.attribute == "country") & (df.id == 0)].iloc[0]
    assert (row["name"], row.question, row.target) == ("Orla Vantreece", "The country of origin for x", "Norway")


def test_bad_folders_and_entries_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_personaqa(tmp_path / "nope")
    with pytest.raises(ValueError, match="no \\*.json"):
        load_personaqa(tmp_path)
    (tmp_path / "country.json").write_text(json.dumps({"0": {"prompt": "My name is A.", "question": "q of x"}}))
    with pytest.raises(ValueError, match=r"entry '0' lacks \['target'\]"):
        load_personaqa(tmp_path)
    (tmp_path / "country.json").write_text(json.dumps({"0": {"prompt": "p", "question": "no slot", "target": "t"}}))
    with pytest.raises(ValueError, match="no placeholder 'x'"):
        load_personaqa(tmp_path)
