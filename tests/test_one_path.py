"""Issue 15 leftovers: one reader (the report reads a torn rows.jsonl through store.load_run), one
alpha chooser (report.choose_cells is superscopes.detect_alpha), one Fig 3 parser, real mapping keys."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from superscopes_nn.output import report

from superscopes_nn.core import store

from superscopes_nn.science import superscopes
from superscopes_nn.data.datasets import load_fig3_prompts
from superscopes_nn.engine.rows import resolve
from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.specs import RESULT_COLUMNS, Affine, Compose, Fn, Source, Target
from superscopes_nn.core.store import record_key, row_key
from superscopes_nn.structure.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=0)


def _record(layer: int, alpha: float, score: float) -> dict:
    rec = dict.fromkeys(RESULT_COLUMNS)
    rec.update(source_prompt="Pink Floyd", source_position=1, source_token="loyd", source_layer=layer,
               site="mlp_out", target_prompt="T x", target_position=1, target_layer=layer, target_site="mlp_out",
               mapping="amplify", mapping_key=f"amplify:{alpha!r}", alpha=alpha, model="m", target_model="m",
               interpretation=f"L{layer} a{alpha:g}", token_ids=[1], score_source_cosine=score)
    return rec


# ------------------------------------------------------------------ one reader


def test_report_reads_a_torn_rows_jsonl_through_the_store(tmp_path):
    assert report.load_run is store.load_run
    records = [_record(layer, a, 0.1 * layer + a / 100) for layer in (0, 1) for a in (1.0, 3.0)]
    (tmp_path / "config.json").write_text(json.dumps({"model": "m"}))
    text = "".join(json.dumps(r) + "\n" for r in records)
    (tmp_path / "rows.jsonl").write_text(text + json.dumps(_record(2, 6.0, 0.9))[:57])  # a kill mid-append
    page = report.write_report_from_run(tmp_path).read_text(encoding="utf-8")
    assert page.count('<td class="cell') == 4  # the torn row is not there, the 4 whole ones are
    assert "L2 a6" not in page and "L1 a3" in page
    df, config = store.load_run(tmp_path)
    assert len(df) == 4 and config == {"model": "m"}


# ------------------------------------------------------------------ one alpha chooser


def test_choose_cells_is_detect_alpha(monkeypatch):
    df = pd.DataFrame([_record(layer, a, s) for layer, a, s in
                       [(0, 1.0, 0.2), (0, 3.0, 0.5), (0, 6.0, 0.5), (1, 1.0, 0.9), (1, 3.0, float("nan"))]])
    calls = []
    real = superscopes.detect_alpha

    def spy(frame, score, by):
        calls.append((score, list(by)))
        return real(frame, score, by)

    monkeypatch.setattr(report, "detect_alpha", spy)
    chosen = report.choose_cells(df)
    assert calls == [("cell_score", ["source_prompt", "site", "source_layer"])]
    assert chosen == {("Pink Floyd", "mlp_out", 0, 3.0), ("Pink Floyd", "mlp_out", 1, 1.0)}  # tie -> smaller alpha
    picked = real(df, "score_source_cosine", ["source_prompt", "site", "source_layer"])
    assert {(r.source_prompt, r.site, r.source_layer, r.alpha) for r in picked.itertuples()} == chosen


# ------------------------------------------------------------------ one Fig 3 parser


def test_fig3_parser_strips_fields_and_indented_comments(tmp_path):
    """The library parser is a drop-in for experiments' old read_fig3_tsv (same output on the same file)."""
    path = tmp_path / "fig3.tsv"
    path.write_text("  # indented comment\nPink Floyd \tloyd\n\n Top Gun\tGun \n", encoding="utf-8")
    assert load_fig3_prompts(path) == [("Pink Floyd", "loyd"), ("Top Gun", "Gun")]
    path.write_text("Pink Floyd\t  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"fig3\.tsv:1 must be 'prompt<TAB>paper_last_token'"):
        load_fig3_prompts(path)


# ------------------------------------------------------------------ mapping keys in resume


def _affine(seed: int) -> Affine:
    g = torch.Generator().manual_seed(seed)
    return Affine(torch.eye(64) + 0.01 * torch.randn(64, 64, generator=g), name="bridge")


def _rows(model, mappings):
    return resolve(model, [(Source("Pink Floyd", 1, -1, "residual"), Target(), f) for f in mappings])


def test_two_affine_maps_with_one_name_are_two_rows_on_resume(model, tmp_path):
    a, b = Compose(_affine(0), 2.0), Compose(_affine(1), 2.0)
    assert a.name == b.name and a.key != b.key
    rows = _rows(model, [a, b])
    assert row_key(rows[0]) != row_key(rows[1])
    df = run_rows(model, rows, max_new_tokens=2, run_dir=tmp_path)
    assert len(df) == 2
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["mapping_key"] for r in stored] == [a.key, b.key]
    # resume with b's weights changed: a's row is reused, the changed map is a new row
    c = Compose(_affine(2), 2.0)
    again = run_rows(model, _rows(model, [a, c]), max_new_tokens=2, run_dir=tmp_path, resume=True)
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["mapping_key"] for r in stored] == [a.key, b.key, c.key]
    assert again.mapping_key.tolist() == [a.key, c.key]
    assert again.token_ids.iloc[0] == df.token_ids.iloc[0]


def test_two_fn_maps_with_one_name_and_different_code_are_two_rows(model, tmp_path):
    f = Fn(lambda v: v * 2.0, name="double")
    g = Fn(lambda v: v * 2.0 + 1.0, name="double")
    assert f.key != g.key and f.key == Fn(lambda v: v * 2.0, name="double").key
    rows = _rows(model, [f, g])
    assert row_key(rows[0]) != row_key(rows[1])
    run_rows(model, rows, max_new_tokens=2, run_dir=tmp_path)
    stored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(stored) == 2 and len({record_key(r) for r in stored}) == 2
    assert {r["mapping_key"] for r in stored} == {f.key, g.key}
