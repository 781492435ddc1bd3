"""The committed official attribute-extraction run (every LRE row a sample, ``--contexts all``) and
its first-context counterpart (docs/runs/): counts recounted from the committed rows alone (no model)."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.patchscopes import attribute_extraction as ae  # noqa: E402

RUNS = Path(__file__).resolve().parents[2] / "docs" / "runs"
M = "attribute_extraction_gemma-3-270m"
ALL = f"{M}_official_8tasks-8subjects-layers-even"
FIRST = f"{M}_first-context_8tasks-8subjects-layers-even"
PAIRS = 81  # range(0, 17, 2) squared
N_ROWS, N_KEPT, RAW, RANDOM = 314, 51, 48, 16  # TSV rows of the 64 subjects; samples kept (10 subjects); counts
SAME_FIRST = 810  # first-context rows with the committed first-context run's interpretation (of 810)
ITEM = ["task", "subject", "sample_id"]
KEYS = ITEM + ["object", "target_prompt", "source_prompt", "source_layer", "target_layer"]


def _true(col):
    return col.astype(str) == "True"


@pytest.fixture(scope="module")
def run():
    df = pd.read_csv(RUNS / f"{ALL}.csv.gz", keep_default_na=False)
    rnd = pd.read_csv(RUNS / f"{ALL}_random.csv.gz", keep_default_na=False)
    filt = pd.read_csv(RUNS / f"{ALL}_filter.csv", keep_default_na=False)
    return df, rnd, filt, pd.read_csv(RUNS / f"{ALL}_chance.csv").iloc[0]


def test_every_row_is_a_sample_and_the_filter_is_per_subject(run):
    df, _, filt, c = run
    filt = filt.assign(kept=_true(filt.kept))
    assert len(filt) == N_ROWS and filt[ITEM].drop_duplicates().shape[0] == len(filt)
    assert filt.groupby(["task", "subject"]).ngroups == 64 and (filt.groupby(["task", "subject"]).size() > 1).any()
    assert (filt.groupby(["task", "subject"]).kept.nunique() == 1).all()  # whole subjects kept or dropped
    ps = df[df.method == "patchscope"]
    kept = filt[filt.kept]
    assert len(kept) == c.n == N_KEPT and kept.groupby(["task", "subject"]).ngroups == 10
    assert set(map(tuple, ps[ITEM].values)) == set(map(tuple, kept[ITEM].values))
    assert (ps.groupby(ITEM).size() == PAIRS).all()
    assert (df.method == "input_only").sum() == len(filt)


def test_raw_and_random_counts_recount(run):
    df, rnd, _, c = run
    ps = df[df.method == "patchscope"].reset_index(drop=True)
    assert len(rnd) == len(ps) == c.n * PAIRS and c.k == PAIRS and (rnd.method == "random").all()
    pd.testing.assert_frame_equal(rnd[KEYS], ps[KEYS])
    assert (rnd.groupby(ITEM + ["source_layer"]).mapping_key.nunique() == 1).all()
    raw = _true(ps.correct).groupby([ps[k] for k in ITEM]).any()
    some = _true(rnd.correct).groupby([rnd[k] for k in ITEM]).any().reindex(raw.index, fill_value=False)
    assert len(raw) == c.n and c.raw_count == raw.sum() == RAW and c.random_count == some.sum() == RANDOM
    assert c.raw == pytest.approx(raw.mean()) and c.random == pytest.approx(some.mean())
    assert c.above_random == pytest.approx(raw.mean() - some.mean())
    assert c.above_random_lo <= c.above_random <= c.above_random_hi


def test_chance_table_recomputes_from_the_rows(run):
    df, rnd, _, c = run
    rnd = rnd.assign(source_layer=rnd.source_layer.astype(int), target_layer=rnd.target_layer.astype(int))
    df.attrs["match"] = "patchscopes"
    again = ae.pair_chance(df, random=rnd).iloc[0]
    assert again.n == c.n
    for key in ("raw", "null", "above", "random", "above_random"):
        for suffix in ("", "_lo", "_hi"):
            assert again[key + suffix] == pytest.approx(c[key + suffix]), key + suffix


def test_first_context_rows_inside_the_official_run(run):
    df, _, filt, _ = run
    first = pd.read_csv(RUNS / f"{FIRST}.csv.gz", keep_default_na=False)
    first = first[first.method == "patchscope"]
    ps = df[df.method == "patchscope"]
    at = filt.groupby(["task", "subject"]).sample_id.min().reset_index()  # each subject's first context
    ps = ps.merge(at, on=ITEM)
    keys = ["task", "subject", "source_prompt", "source_layer", "target_layer"]
    both = ps.merge(first, on=keys, suffixes=("", "_first"), validate="one_to_one")
    assert len(both) == len(ps) == len(first) == 10 * PAIRS
    assert (both.interpretation == both.interpretation_first).sum() == SAME_FIRST
