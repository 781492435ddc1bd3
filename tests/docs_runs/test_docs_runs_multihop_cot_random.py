"""The multi-hop CoT random-vector arm committed under docs/runs/ (``--control random``) gives the random
columns of the chance tables beside it, recounted from the rows alone (no model, no embedder)."""

from pathlib import Path

import pandas as pd
import pytest

from experiments.common import alias_match, answer_aliases, load_queries

RUNS = Path(__file__).resolve().parents[2] / "docs" / "runs"
M = "gemma-3-270m"
SAME = ["id", "source_layer", "target_layer", "prompt", "target_prompt"]
# variant: (layer pairs, queries, queries some pair answers with the random vector, with the real one)
VARIANTS = {"official": (324, 10, 4, 2), "reversed_layers-even": (81, 11, 2, 3)}


def _true(col):
    return col.astype(str) == "True"


def _read(variant):
    df = pd.read_csv(RUNS / f"multihop_cot_{M}_{variant}.csv.gz", keep_default_na=False)
    rnd = pd.read_csv(RUNS / f"multihop_cot_{M}_{variant}_random.csv.gz", keep_default_na=False)
    chance = pd.read_csv(RUNS / f"multihop_cot_{M}_{variant}_chance.csv").iloc[0]
    return df, rnd, chance


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_random_rows_pair_with_the_patched_rows(variant):
    df, rnd, _ = _read(variant)
    pairs, n_q, _, _ = VARIANTS[variant]
    ps = df[df.method == "patchscope"].reset_index(drop=True)
    assert len(rnd) == len(ps) == ps.id.nunique() * pairs and (rnd.method == "random").all()
    assert rnd[SAME].astype(str).equals(ps[SAME].astype(str))
    assert rnd.mapping_key.str.startswith("random:").all() and set(rnd.mapping) == {"random"}
    assert (rnd.groupby(["prompt", "source_layer"]).mapping_key.nunique() == 1).all()
    assert (rnd.interpretation != ps.interpretation).mean() > 0.5  # random vectors, not the real ones


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_random_rows_are_scored_by_the_official_rule(variant):
    _, rnd, _ = _read(variant)
    aliases = {q["id"]: answer_aliases(q) for _, q in load_queries().iterrows()}
    assert _true(rnd.correct).tolist() == [alias_match(t, aliases[i], "patchscopes")
                                           for t, i in zip(rnd.interpretation, rnd.id)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chance_random_columns_recount(variant):
    df, rnd, c = _read(variant)
    _, n_q, n_random, n_raw = VARIANTS[variant]
    ps = df[df.method == "patchscope"]
    raw = _true(ps.correct).groupby(ps.id).any().sum()
    some = _true(rnd.correct).groupby(rnd.id).any().sum()
    assert c.raw_count == raw == n_raw and c.random_count == some == n_random and c.n == rnd.id.nunique() == n_q
    assert c.random == pytest.approx(some / c.n) and c.above_random == pytest.approx((raw - some) / c.n)
    assert c.random_lo <= c.random <= c.random_hi and c.above_random_lo <= c.above_random <= c.above_random_hi
    s = pd.read_csv(RUNS / f"multihop_cot_{M}_{variant}_summary.csv").set_index("method")
    assert s.loc["random_best_pairs"].accuracy == pytest.approx(some / c.n)


def test_official_random_arm_hits():
    # the random vector also "answers" Amazon (US: "America" in "African American") and Anne Frank House
    # (Dutch): the official target prompt is the first-hop phrase, which names e1 itself
    _, rnd, c = _read("official")
    hits = _true(rnd.correct).groupby(rnd.id).sum()
    assert hits[hits > 0].to_dict() == {
        "birth_country_of_founder_amazon": 4, "birth_country_of_founder_ford_motor_company": 6,
        "language_of_country_of_landmark_anne_frank_house": 2, "language_of_country_of_landmark_persepolis": 1}
    assert c.above_random == pytest.approx(-0.2)
