"""superscopes_nn.data.datasets on small fixtures, on the shipped data, and every error path (the data folder's
lookup and the SUPERSCOPES_SHARED_DATA override: tests/test_data_provenance.py)."""

import json
from pathlib import Path

import datasets
import pytest

from superscopes_nn.data.external_data import load_hopping_too_late_csv, parse_popqa_rows
from superscopes_nn.data.datasets import (
    DATA_DIR, ENTITY_FIELDS, TWO_HOP_FIELDS, load_entities, load_fig3_prompts, load_lre,
    load_two_hop,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- entities / two-hop


def test_load_entities_fixture():
    ds = load_entities(FIXTURES / "entities_small.jsonl")
    assert isinstance(ds, datasets.Dataset) and ds.column_names == list(ENTITY_FIELDS)
    assert ds["name"] == ["Pink Floyd", "Alexander the Great", "Titanic"]  # the blank line is skipped
    assert ds[0]["aliases"] == ["Floyd", "The Pink Floyd"] and ds[2]["aliases"] == []


def test_load_entities_default_file():
    ds = load_entities()
    assert len(ds) == 285 and "Pink Floyd" in ds["name"]
    assert DATA_DIR.parent == Path(__import__("superscopes_nn").__file__).parent  # package data, not <repo>/data


def test_load_two_hop_fixture():
    ds = load_two_hop(FIXTURES / "two_hop_small.jsonl")
    assert ds.column_names == list(TWO_HOP_FIELDS) and len(ds) == 2
    assert ds[0]["answer"] == "Yoko Ono" and ds[0]["bridge_aliases"] == ["Lennon", "John Winston Lennon"]


def test_load_two_hop_default_file():
    ds = load_two_hop()
    assert len(ds) == 182 and ds.column_names == list(TWO_HOP_FIELDS)


def test_jsonl_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_entities(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope2.jsonl"):
        load_two_hop(tmp_path / "nope2.jsonl")


def test_jsonl_missing_column_names_column_and_found(tmp_path):
    bad = write(tmp_path / "e.jsonl", json.dumps({"name": "X", "type": "band", "aliases": []}) + "\n")
    with pytest.raises(ValueError, match=r"'description'.*\['name', 'type', 'aliases'\]"):
        load_entities(bad)


def test_jsonl_empty_file_names_file(tmp_path):
    empty = write(tmp_path / "empty.jsonl", "\n")
    with pytest.raises(ValueError, match="empty.jsonl"):
        load_entities(empty)


def test_jsonl_bad_json_and_bad_types(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_entities(write(tmp_path / "bad.jsonl", "{not json\n"))
    row = {"name": "X", "type": "band", "description": "d", "aliases": "Floyd"}
    with pytest.raises(ValueError, match="'aliases'.*'Floyd'"):
        load_entities(write(tmp_path / "t.jsonl", json.dumps(row) + "\n"))
    row = {"name": "", "type": "band", "description": "d", "aliases": []}
    with pytest.raises(ValueError, match=r"'name'.*t2\.jsonl:1"):
        load_entities(write(tmp_path / "t2.jsonl", json.dumps(row) + "\n"))


# --------------------------------------------------------------------------- Hopping Too Late


def test_hopping_too_late_csv_fixture():
    ds = load_hopping_too_late_csv(FIXTURES / "hopping_too_late_small.csv")
    assert ds.column_names == list(TWO_HOP_FIELDS) and len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["two_hop_prompt"] == "The spouse of the performer of Imagine is"  # from source_prompt
    assert a["first_hop_prompt"] == "The performer of Imagine is"
    assert a["second_hop_prompt"] == "The spouse of John Lennon is"
    assert (a["bridge"], a["answer"], a["r1"], a["r2"]) == ("John Lennon", "Yoko Ono", "performer", "spouse")
    assert a["bridge_aliases"] == ["Lennon", "John Winston Lennon"]  # JSON list
    assert a["answer_aliases"] == ["Yoko", "Ono"]  # Python list literal
    # empty source_prompt: composed from the templates
    assert b["two_hop_prompt"] == "The place of birth of the author of Pride and Prejudice is"
    assert b["answer_aliases"] == [] and b["id"] == "htl_1"


def test_hopping_too_late_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_hopping_too_late_csv(tmp_path / "missing.csv")
    header = "e1_label,r1_template,r2_template,e2_label,e3_label,e2_aliases"
    with pytest.raises(ValueError, match=r"'e3_aliases'.*'e2_aliases'"):
        load_hopping_too_late_csv(write(tmp_path / "cols.csv", header + "\nA,of {},B {} is,C,D,[]\n"))
    header += ",e3_aliases"
    with pytest.raises(ValueError, match="empty.csv"):
        load_hopping_too_late_csv(write(tmp_path / "empty.csv", header + "\n"))
    with pytest.raises(ValueError, match=r"\['unclosed"):
        load_hopping_too_late_csv(write(tmp_path / "al.csv", header + "\nA,of {},B {} is,C,D,[],\"['unclosed\"\n"))
    with pytest.raises(ValueError, match="'no placeholder'"):
        load_hopping_too_late_csv(write(tmp_path / "tpl.csv", header + "\nA,no placeholder,B {} is,C,D,[],[]\n"))


# --------------------------------------------------------------------------- Patchscopes LRE


def test_load_lre_fixture():
    ds = load_lre(FIXTURES / "lre_small")
    assert ds.column_names[:5] == ["relation", "kind", "subject", "object", "prompt_target"]
    assert {"prompt_source", "position_source", "sample_id"} <= set(ds.column_names)
    assert len(ds) == 4 and set(ds["kind"]) == {"factual", "commonsense"}
    fact = load_lre(FIXTURES / "lre_small", kind="factual")
    assert fact["relation"] == ["country_capital_city"] * 3
    assert fact["object"] == ["Paris", "Paris", "Windhoek"] and fact["prompt_target"][0] == "The capital city of x"
    assert fact["prompt_source"][1] == ""  # an empty source prompt stays a string
    com = load_lre(FIXTURES / "lre_small", relations=["fruit_outside_color"])
    assert com["prompt_source"] == [" a bunch of bananas\n"]  # multi-line quoted field


def test_load_lre_real_files():
    from superscopes_nn.data.datasets import DATA_DIR

    LRE_ROOT = DATA_DIR / "patchscopes_lre"   # the shipped (gzipped) upstream files
    ds = load_lre(LRE_ROOT, kind="factual", relations=["country_capital_city", "country_currency"])
    assert set(ds["relation"]) == {"country_capital_city", "country_currency"} and set(ds["kind"]) == {"factual"}
    row = ds.filter(lambda r: r["subject"] == "United States" and r["relation"] == "country_capital_city")[0]
    assert row["object"] == "Washington D.C." and row["prompt_target"] == "The capital city of x"
    assert len(load_lre(LRE_ROOT, kind="commonsense", relations="fruit_inside_color")) > 0


def test_load_lre_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_root"):
        load_lre(tmp_path / "no_root")
    with pytest.raises(ValueError, match="'fictional'"):
        load_lre(FIXTURES / "lre_small", kind="fictional")
    with pytest.raises(ValueError, match="'country_moon'.*country_capital_city"):
        load_lre(FIXTURES / "lre_small", relations=["country_moon"])
    (tmp_path / "emptyroot").mkdir()
    with pytest.raises(ValueError, match="emptyroot"):
        load_lre(tmp_path / "emptyroot")
    (tmp_path / "r" / "factual").mkdir(parents=True)
    write(tmp_path / "r" / "factual" / "rel.tsv", "\tsubject\tprompt_target\n0\tFrance\tThe capital of x\n")
    with pytest.raises(ValueError, match=r"'object'.*\['subject', 'prompt_target'\]"):
        load_lre(tmp_path / "r")
    write(tmp_path / "r" / "factual" / "rel.tsv", "\tsubject\tobject\tprompt_target\tsample_id\n0\tF\tP\tx\tseven\n")
    with pytest.raises(ValueError, match="'sample_id'.*rel.tsv"):
        load_lre(tmp_path / "r")
    write(tmp_path / "r" / "factual" / "rel.tsv", "\tsubject\tobject\tprompt_target\n")
    with pytest.raises(ValueError, match="rel.tsv"):
        load_lre(tmp_path / "r")


# --------------------------------------------------------------------------- PopQA


def popqa_rows():
    return [json.loads(line) for line in (FIXTURES / "popqa_small.jsonl").read_text().splitlines()]


def test_parse_popqa_rows_fixture():
    ds = parse_popqa_rows(popqa_rows())
    assert ds.column_names == ["id", "subject", "relation", "object", "question", "possible_answers", "s_pop",
                               "subject_aliases"]
    assert ds[0]["subject"] == "George Rankin" and ds[0]["relation"] == "occupation"
    assert ds[0]["possible_answers"] == ["politician", "political leader"] and ds[0]["s_pop"] == 142
    assert ds[1]["id"] == "6054" and ds[1]["question"] == "In what country is Paris?"


def test_parse_popqa_rows_accepts_dataset_and_frame():
    rows = popqa_rows()
    assert len(parse_popqa_rows(datasets.Dataset.from_list(rows))) == 2
    import pandas as pd

    assert parse_popqa_rows(pd.DataFrame(rows))["possible_answers"][1] == ["France", "French Republic"]


def test_parse_popqa_rows_errors():
    with pytest.raises(ValueError, match="empty"):
        parse_popqa_rows([])
    rows = popqa_rows()
    del rows[1]["question"]
    with pytest.raises(ValueError, match=r"'question'.*row 1.*'subj'"):
        parse_popqa_rows(rows)
    rows = popqa_rows()
    rows[0]["possible_answers"] = '["politician", '
    with pytest.raises(ValueError, match=r"\[\"politician\",.*4222362"):
        parse_popqa_rows(rows)


# --------------------------------------------------------------------------- Figure 3 prompts


def test_load_fig3_fixture():
    pairs = load_fig3_prompts(FIXTURES / "fig3_small.tsv")
    assert pairs == [("Pink Floyd", "loyd"), ("Led Zeppelin", "in"), ("Top Gun", "Gun")]
    frame = load_fig3_prompts(FIXTURES / "fig3_small.tsv", as_frame=True)
    assert list(frame.columns) == ["prompt", "paper_token"] and len(frame) == 3


def test_load_fig3_default_file():
    assert load_lre(kind="factual", relations=["country_capital_city"])["relation"][0] == "country_capital_city"
    pairs = load_fig3_prompts()
    assert ("Pink Floyd", "loyd") in pairs and all(not p.startswith("#") for p, _ in pairs)


def test_load_fig3_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"gone\.tsv.*superscopes_fig3_prompts\.tsv"):
        load_fig3_prompts(tmp_path / "gone.tsv")
    with pytest.raises(ValueError, match="only.tsv"):
        load_fig3_prompts(write(tmp_path / "only.tsv", "# just a comment\n\n"))
    with pytest.raises(ValueError, match=r"bad\.tsv:2.*'Pink Floyd'"):
        load_fig3_prompts(write(tmp_path / "bad.tsv", "# c\nPink Floyd\n"))


# ------------------------------------------------------------------ one Fig 3 parser (from test_one_path)

def test_fig3_parser_strips_fields_and_indented_comments(tmp_path):
    """The library parser is a drop-in for experiments' old read_fig3_tsv (same output on the same file)."""
    path = tmp_path / "fig3.tsv"
    path.write_text("  # indented comment\nPink Floyd \tloyd\n\n Top Gun\tGun \n", encoding="utf-8")
    assert load_fig3_prompts(path) == [("Pink Floyd", "loyd"), ("Top Gun", "Gun")]
    path.write_text("Pink Floyd\t  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"fig3\.tsv:1 must be 'prompt<TAB>paper_last_token'"):
        load_fig3_prompts(path)
