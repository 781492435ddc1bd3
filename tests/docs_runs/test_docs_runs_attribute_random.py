"""The random-vector arm of the committed attribute-extraction run (docs/runs/): its counts in the
chance CSV recounted from the committed rows alone (no model, no embedder)."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.patchscopes import attribute_extraction as ae  # noqa: E402

RUNS = Path(__file__).resolve().parents[2] / "docs" / "runs"
V = "attribute_extraction_gemma-3-270m_first-context_8tasks-8subjects-layers-{}"
VARIANTS = {"even": 81, "all": 289}  # (l, l*) pairs: range(0, 17, 2) or range(17) squared
KEYS = ["task", "subject", "object", "target_prompt", "source_prompt", "source_layer", "target_layer"]


def _true(col):
    return col.astype(str) == "True"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def runs(request):
    v = V.format(request.param)
    df = pd.read_csv(RUNS / f"{v}.csv.gz", keep_default_na=False)
    rnd = pd.read_csv(RUNS / f"{v}_random.csv.gz", keep_default_na=False)
    return df, rnd, pd.read_csv(RUNS / f"{v}_chance.csv").iloc[0], VARIANTS[request.param]


def test_random_rows_are_the_patched_rows(runs):
    df, rnd, _, pairs = runs
    ps = df[df.method == "patchscope"].reset_index(drop=True)
    assert len(rnd) == len(ps) == 10 * pairs and (rnd.method == "random").all()
    pd.testing.assert_frame_equal(rnd[KEYS], ps[KEYS])
    assert rnd.mapping_key.str.startswith("random:").all()
    assert (rnd.groupby(["task", "subject", "source_layer"]).mapping_key.nunique() == 1).all()


def test_random_counts_recount(runs):
    df, rnd, c, pairs = runs
    ps = df[df.method == "patchscope"]
    raw = _true(ps.correct).groupby([ps.task, ps.subject]).any()
    some = _true(rnd.correct).groupby([rnd.task, rnd.subject]).any().reindex(raw.index, fill_value=False)
    assert c.n == len(raw) == 10 and c.k == pairs and c.raw_count == raw.sum()
    assert c.random_count == some.sum() and c.random == pytest.approx(some.mean())
    assert c.above_random == pytest.approx(raw.mean() - some.mean())
    assert c.above_random_lo <= c.above_random <= c.above_random_hi


def test_chance_table_recomputes_from_the_rows(runs):
    df, rnd, c, pairs = runs
    rnd = rnd.assign(source_layer=rnd.source_layer.astype(int), target_layer=rnd.target_layer.astype(int))
    df.attrs["match"] = "patchscopes"
    again = ae.pair_chance(df, random=rnd).iloc[0]
    for key in ("raw", "null", "above", "random", "above_random"):
        for suffix in ("", "_lo", "_hi"):
            assert again[key + suffix] == pytest.approx(c[key + suffix]), key + suffix
