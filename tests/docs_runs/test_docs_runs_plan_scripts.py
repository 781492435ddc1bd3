"""docs/ndif.md "What a paper figure costs on NDIF": the table is the rendering of docs/runs/plan_scripts.json
(written by scripts/plan_tables.py from ``superscopes plan --script``), every registered script has a case on
each config, and a case re-planned now gives the committed numbers."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import experiments  # noqa: E402

spec = importlib.util.spec_from_file_location("plan_tables", ROOT / "scripts" / "plan_tables.py")
pt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pt)


@pytest.fixture(scope="module")
def cases():
    return json.loads(pt.JSON.read_text())


def test_the_doc_table_is_the_committed_plans(cases):
    text = pt.DOC.read_text()
    block = text.split(pt.START, 1)[1].split(pt.END, 1)[0].strip()
    assert block == pt.render(cases).strip()


def test_every_script_on_every_config(cases):
    assert sorted((c["script"], c["model"]) for c in cases) == sorted(
        (s, m) for s in experiments.EXPERIMENTS for m in pt.MODELS)
    assert all(c["refused"] or c["requests"] > 0 for c in cases)
    assert not [c for c in cases if "skipped" in c]  # every case planned (or refused by the script itself)
    assert all((c["args"], c["note"]) == tuple(pt.settings(c["script"])) for c in cases)


@pytest.mark.parametrize("model", pt.MODELS)
def test_a_refusal_replans_as_committed(model, cases):
    """persona_control refuses --remote before loading anything: re-planned in well under a second."""
    got = pt.plan_case("persona_control", model)
    assert got == next(c for c in cases if (c["script"], c["model"]) == ("persona_control", model))
