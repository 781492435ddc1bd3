"""The back-patching rerun with the norm-matched random-vector arm under docs/runs/: the random rows
are one-to-one with the back-patched rows, and their counts (rescored from the rows and the package's
answer aliases alone: no model, no embedder) give the summary's random columns."""

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.hopping_too_late import backpatching as bp
from experiments.common import alias_match, answer_aliases

RUNS = Path(__file__).resolve().parents[2] / "docs" / "runs"
V = "backpatching_gemma-3-270m_paper_population"
KEYS = ["id", "source_layer", "target_layer"]


@pytest.fixture(scope="module")
def committed():
    df = pd.read_csv(RUNS / f"{V}.csv.gz", keep_default_na=False)
    rnd = pd.read_csv(RUNS / f"{V}_random.csv.gz", keep_default_na=False)
    summary = json.loads((RUNS / f"{V}_summary.json").read_text())
    return df, rnd, summary


def test_random_rows_match_the_backpatched_rows(committed):
    df, rnd, summary = committed
    assert list(rnd.columns) == bp.RANDOM_COLUMNS and len(rnd) == len(df) == 4 * 153 == summary["n_rows_random"]
    assert rnd[KEYS].values.tolist() == df[KEYS].values.tolist()
    assert (rnd.mapping == "random").all() and rnd.mapping_key.str.startswith("random:d640:seed").all()
    per_source = rnd.groupby(["id", "source_layer"]).mapping_key.nunique()  # one direction per state read
    assert (per_source == 1).all() and rnd.mapping_key.nunique() == 4 * 17
    assert (rnd.interpretation != df.interpretation).mean() > 0.9


def test_random_counts_recount_from_the_rows(committed):
    df, rnd, summary = committed
    qs = bp.load_queries(None)
    aliases = {q["id"]: answer_aliases(q) for _, q in qs[qs.id.isin(set(df.id))].iterrows()}
    assert len(aliases) == 4
    rescored = [alias_match(t, aliases[i], "substring") for t, i in zip(rnd.interpretation, rnd.id)]
    assert rescored == (rnd.correct.astype(str) == "True").tolist()
    fixed = pd.Series(rescored).groupby(rnd.id.to_numpy()).any()
    c = summary["chance"][0]
    assert fixed.sum() == c["random_count"] == summary["n_fixed_random"] == RANDOM_FIXED and c["n"] == 4
    assert c["raw_count"] == summary["n_fixed"] == 3 and c["null_count"] == 0
    assert c["above_random"] == pytest.approx(c["raw"] - c["random"]) == pytest.approx((3 - RANDOM_FIXED) / 4)
    assert sorted(pd.Series(rescored).groupby(rnd.id.to_numpy()).sum()) == RANDOM_PER_QUERY
    df = df.assign(correct=df.correct.astype(str) == "True", two_hop_correct=False)
    again = bp.fix_chance(df, aliases, match="substring", random_df=rnd.assign(correct=rescored)).iloc[0]
    for key in ("raw", "null", "random", "above", "above_random"):
        for part in ("", "_lo", "_hi"):
            assert again[key + part] == pytest.approx(c[key + part]), key + part


RANDOM_FIXED = 1  # "central European" holds the alias "euro" (substring rule)
RANDOM_PER_QUERY = [0, 0, 0, 1]
