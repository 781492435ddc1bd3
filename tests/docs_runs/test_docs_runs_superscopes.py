"""The per-row CSVs committed under docs/runs/ give the counts committed beside them.

Each rerun in docs/results*.md commits its rows; these tests recount the headline numbers
from the rows alone (no model, no embedder), independently of the code that wrote the tables.
"""

from pathlib import Path

import pandas as pd
import pytest

RUNS = Path(__file__).resolve().parents[2] / "docs" / "runs"


@pytest.mark.parametrize("protocol, decoding", [("official", ""), ("same-site", ""), ("official", "_llama2-chat-s0")])
def test_fig3_rows_give_the_committed_counts(protocol, decoding):
    scored = pd.read_csv(RUNS / f"fig3_gemma-3-270m_{protocol}{decoding}_scored.csv.gz")
    chance = pd.read_csv(RUNS / f"fig3_gemma-3-270m_{protocol}{decoding}_chance.csv")
    assert len(scored) == 48 * 7 * 6 and scored.source_prompt.nunique() == 48
    assert sorted(scored.source_layer.unique()) == list(range(1, 8)) and scored["error"].isna().all()
    want_site = {"official": "residual", "same-site": "mlp_out"}[protocol]
    assert set(scored.target_site) == {want_site} and set(scored.site) == {"mlp_out"}
    ok = scored.assign(ok=scored.score_source_cosine > 0.3)
    unit = ["source_prompt", "source_layer"]
    counts = {"patchscopes": ok[ok.alpha == 1].groupby(unit).ok.any().sum(),
              "superscopes": ok[ok.alpha >= 3].groupby(unit).ok.any().sum()}
    for a in sorted(scored.alpha.unique()):
        counts[f"alpha={a:g}"] = ok[ok.alpha == a].ok.sum()
    table = chance[chance.source_layer.astype(str) == "all"].set_index("arm")
    for arm, n in counts.items():
        assert table.loc[arm, "raw_count"] == pytest.approx(n), arm
        assert table.loc[arm, "n"] == 336
    assert (table.null_count > 0).all() and (table.raw_lo <= table.raw).all() and (table.raw <= table.raw_hi).all()


@pytest.mark.parametrize("protocol", ["official", "same-site"])
def test_fig3_random_vector_rows_give_the_committed_random_columns(protocol):
    """The norm-matched random-vector arm: success counts (chance CSV) and the α rule's pick (detect CSV)."""
    rnd = pd.read_csv(RUNS / f"fig3_gemma-3-270m_{protocol}_random_scored.csv.gz", keep_default_na=False)
    chance = pd.read_csv(RUNS / f"fig3_gemma-3-270m_{protocol}_chance.csv")
    detect = pd.read_csv(RUNS / f"fig3_gemma-3-270m_{protocol}_detect.csv").set_index("source_layer")
    assert len(rnd) == 2016 and set(rnd.mapping) == {"random+amplify"}
    cos = pd.to_numeric(rnd.score_source_cosine).where(rnd.interpretation != "", 0.0)
    rnd = rnd.assign(cos=cos, ok=cos > 0.3)
    unit = ["source_prompt", "source_layer"]
    table = chance[chance.source_layer.astype(str) == "all"].set_index("arm")
    assert table.loc["superscopes", "random_count"] == rnd[rnd.alpha >= 3].groupby(unit).ok.any().sum()
    assert table.loc["patchscopes", "random_count"] == rnd[rnd.alpha == 1].ok.sum()
    picked = rnd[rnd.alpha >= 3].groupby(unit).cos.max()
    assert detect.loc["all", "random"] == pytest.approx(picked.mean(), abs=1e-6)
    for layer, g in picked.groupby(level="source_layer"):
        assert detect.loc[str(layer), "random"] == pytest.approx(g.mean(), abs=1e-6)
    assert detect.loc["all", "above_random"] == pytest.approx(detect.loc["all", "raw"] - detect.loc["all", "random"])


def test_token_identity_rows_give_the_committed_precisions():
    rows = pd.read_csv(RUNS / "token_identity_gemma-3-270m_8positions.csv.gz")
    summary = pd.read_csv(RUNS / "token_identity_gemma-3-270m_8positions_summary.csv").set_index("layer")
    assert len(rows) == 2 * 236 * 18 and rows.sentence_id.nunique() == 30
    for (method, layer), g in rows.groupby(["method", "layer"]):
        assert len(g) == 236
        assert g.correct.mean() == pytest.approx(summary.loc[layer, method])
        assert summary.loc[layer, f"{method}_lo"] <= g.correct.mean() <= summary.loc[layer, f"{method}_hi"]
    last = rows[rows.layer == rows.layer.max()]
    assert last.correct.all()  # the last layer's readout is the model's own prediction, by construction


def test_bridge_rows_give_the_committed_rates():
    rows = pd.read_csv(RUNS / "bridge_resolution_gemma-3-270m_60stratified.csv.gz")
    summary = pd.read_csv(RUNS / "bridge_resolution_gemma-3-270m_60stratified_summary.csv").set_index("source_layer")
    chance = pd.read_csv(RUNS / "bridge_resolution_gemma-3-270m_60stratified_chance.csv")
    assert rows.id.nunique() == 59 and len(rows) == 59 * 18
    per_layer = rows.groupby("source_layer").decodable.mean()
    assert per_layer.to_numpy() == pytest.approx(summary.decodable.to_numpy())
    some = rows.groupby("id").decodable.any().sum()
    best = chance[chance.scope != "layer"].iloc[0]
    assert some == 11 and best.raw_count == pytest.approx(some) and best.null_count < some
    rnd = pd.read_csv(RUNS / "bridge_resolution_gemma-3-270m_60stratified_random.csv.gz")
    keys = ["id", "source_layer", "source_position"]
    pd.testing.assert_frame_equal(rnd[keys], rows[keys])
    assert set(rnd.mapping) == {"random"} and rnd.mapping_key.nunique() == len(rnd)
    assert rnd.groupby("id").decodable.any().sum() == best.random_count == 0
    assert best.above_random == pytest.approx(some / 59)
    for layer, g in rnd.groupby("source_layer"):
        row = chance[(chance.scope == "layer") & (chance.source_layer == str(layer))].iloc[0]
        assert row.random == pytest.approx(g.decodable.mean())


def test_verbalizer_rows_give_the_committed_tally():
    rows = pd.read_csv(RUNS / "verbalizer_vs_source_gemma-3-270m_smollm2_4tasks-8subjects.csv.gz")
    summary = pd.read_csv(RUNS / "verbalizer_vs_source_gemma-3-270m_smollm2_4tasks-8subjects_summary.csv")
    for r in summary.itertuples():
        g = rows[rows.source_layer == r.source_layer]
        assert len(g) == 32 and g.cross_correct.mean() == pytest.approx(r.cross_acc)
        dis = g[g.source_correct != g.verbalizer_correct]
        assert len(dis) == r.n_disagree
        assert (dis.cross_correct == dis.verbalizer_correct).mean() == pytest.approx(r.follows_verbalizer)
