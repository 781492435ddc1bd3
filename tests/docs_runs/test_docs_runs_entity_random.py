"""The entity-resolution rerun's norm-matched random-vector arm under docs/runs/: the random rows pair
one-to-one with the patchscope rows, and the chance table's random columns are recounted from the
committed random rows alone (no model, no embedder)."""

from pathlib import Path

import pandas as pd
import pytest

RUNS = Path(__file__).resolve().parents[2] / "docs" / "runs"
STEM = "entity_resolution_gemma-3-270m_official"
KEY = ["entity", "source_layer", "source_position", "source_token", "target_position", "target_layer", "alpha"]


def _true(col):
    return col.astype(str) == "True"


@pytest.fixture(scope="module")
def runs():
    real = pd.read_csv(RUNS / f"{STEM}.csv.gz", keep_default_na=False)
    rnd = pd.read_csv(RUNS / f"{STEM}_random.csv.gz", keep_default_na=False)
    chance = pd.read_csv(RUNS / f"{STEM}_chance.csv")
    return real[real.method == "patchscope"], rnd, chance


def test_random_rows_pair_with_the_patchscope_rows(runs):
    ps, rnd, _ = runs
    assert len(rnd) == len(ps) == 600 and set(rnd.method) == {"random"}
    assert rnd.entity.nunique() == 60 and sorted(rnd.source_layer.unique()) == list(range(10))
    # (the real CSV's position columns are text: its baseline rows leave them empty)
    num = ["source_position", "target_position", "target_layer", "alpha"]
    a, b = ps[KEY].reset_index(drop=True), rnd[KEY].reset_index(drop=True)
    a[num], b[num] = a[num].astype(float), b[num].astype(float)
    pd.testing.assert_frame_equal(a, b)
    assert rnd.mapping_key.str.startswith("random:").all() and (rnd.error == "").all()
    # one direction per source vector (entity, layer): 600 distinct seeds
    assert rnd.mapping_key.nunique() == 600


def _rows(chance, metric):
    t = chance[(chance.metric == metric) & (chance.method == "patchscope")]
    return t[t.scope == "layer"].set_index("source_layer"), t[t.scope == "best of layers"].iloc[0]


@pytest.mark.parametrize("metric", ["alias", "rouge_l"])
def test_random_columns_recount(runs, metric):
    ps, rnd, chance = runs
    col = f"score_{metric}"
    score = (lambda d: _true(d[col]).astype(float)) if metric == "alias" else (lambda d: d[col].astype(float))
    per, best = _rows(chance, metric)
    for layer, g in rnd.groupby("source_layer"):
        r = per.loc[str(layer)]
        assert r.random == pytest.approx(score(g).mean()) and r.n == 60
        assert r.random_count == pytest.approx(score(g).sum())
        assert r.above_random == pytest.approx(r.raw - r.random)
    want = score(rnd).groupby(rnd.entity).max()
    assert best.random == pytest.approx(want.mean()) and best.random_count == pytest.approx(want.sum())
    real = score(ps).groupby(ps.entity).max()
    assert best.above_random == pytest.approx(real.mean() - want.mean())
    assert best.random_lo <= best.random <= best.random_hi
    assert best.above_random_lo <= best.above_random <= best.above_random_hi


def test_cosine_random_columns_are_consistent(runs):
    _, _, chance = runs
    per, best = _rows(chance, "cosine")
    for r in [*per.itertuples(), best]:
        assert r.above_random == pytest.approx(r.raw - r.random) and r.random_count == pytest.approx(r.random * r.n)
    assert chance[chance.method == "input_only"].random.isna().all()
