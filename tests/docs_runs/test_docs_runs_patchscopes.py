"""The Patchscopes-side per-row CSVs under docs/runs/ give the counts in docs/results*.md and in the
chance tables committed beside them (recounted from the rows alone: no model, no embedder)."""

import json
from pathlib import Path

import pandas as pd
import pytest

RUNS = Path(__file__).resolve().parents[2] / "docs" / "runs"
M = "gemma-3-270m"


def _true(col):
    return col.astype(str) == "True"


def test_entity_resolution_rows():
    df = pd.read_csv(RUNS / f"entity_resolution_{M}_official.csv.gz", keep_default_na=False)
    chance = pd.read_csv(RUNS / f"entity_resolution_{M}_official_chance.csv")
    ps, base = df[df.method == "patchscope"], df[df.method == "input_only"]
    assert ps.entity.nunique() == 60 and sorted(ps.source_layer.unique()) == list(range(10)) and len(base) == 60
    alias = chance[chance.metric == "alias"]
    best = alias[alias.scope == "best of layers"].iloc[0]
    assert best.raw == pytest.approx(_true(ps.score_alias).groupby(ps.entity).any().mean()) == pytest.approx(29 / 60)
    assert 0 < best.null < 0.05 and best.n == 60
    for layer, g in ps.groupby("source_layer"):
        row = alias[(alias.scope == "layer") & (alias.method == "patchscope") & (alias.source_layer == str(layer))]
        assert row.raw.iloc[0] == pytest.approx(_true(g.score_alias).mean())
    assert _true(base.score_alias).sum() == 22


def test_attribute_extraction_rows():
    v = f"attribute_extraction_{M}_first-context_8tasks-8subjects-layers-even"
    df = pd.read_csv(RUNS / f"{v}.csv.gz", keep_default_na=False)
    filt = pd.read_csv(RUNS / f"{v}_filter.csv")
    ps = df[df.method == "patchscope"]
    kept = filt[filt.kept]
    assert len(filt) == 64 and len(kept) == 10
    assert set(zip(ps.task, ps.subject)) == set(zip(kept.task, kept.subject))
    assert sorted(ps.source_layer.unique()) == sorted(ps.target_layer.unique()) == list(range(0, 17, 2))
    some = _true(ps.correct).groupby([ps.task, ps.subject]).any()
    c = pd.read_csv(RUNS / f"{v}_chance.csv").iloc[0]
    assert some.sum() == c.raw_count == 9 and c.n == 10 and c.null_count < 1


def test_backpatching_rows():
    v = f"backpatching_{M}_paper_population"
    df = pd.read_csv(RUNS / f"{v}.csv.gz")
    hops = pd.read_csv(RUNS / f"{v}_hops.csv.gz")
    summary = json.loads((RUNS / f"{v}_summary.json").read_text())
    assert len(hops) == 182 and hops.paper_population.sum() == 4 and set(df.id) == set(hops.id[hops.paper_population])
    assert len(df) == 4 * 153 and (df.source_layer > df.target_layer).all()
    assert hops.category.value_counts().to_dict() == summary["categories"] == {
        "first_hop_wrong": 133, "both_correct_composition_correct": 25, "second_hop_wrong": 20,
        "both_correct_composition_wrong": 4}
    fixed = df.groupby("id").correct.any().sum()
    assert fixed == summary["n_fixed"] == summary["chance"][0]["raw_count"] == 3
    assert sorted(df.groupby("id").correct.sum()) == [0, 5, 6, 14]


@pytest.mark.parametrize("variant,pairs", [("official", 324), ("official_layers-even", 81)])
def test_multihop_cot_rows(variant, pairs):
    df = pd.read_csv(RUNS / f"multihop_cot_{M}_{variant}.csv.gz", keep_default_na=False)
    ps = df[df.method == "patchscope"]
    assert ps.id.nunique() == 10 and len(ps) == 10 * pairs
    c = pd.read_csv(RUNS / f"multihop_cot_{M}_{variant}_chance.csv").iloc[0]
    assert _true(ps.correct).groupby(ps.id).any().sum() == c.raw_count == 2 and c.k == pairs
    assert c.null_count > 1  # two answers are the United States: a shuffled answer often matches
    assert _true(df[df.method == "vanilla"].correct).sum() == 8 and _true(df[df.method == "cot"].correct).sum() == 6
