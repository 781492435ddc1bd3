"""Multi-hop experiments on a tiny random model: back-patching, multi-hop Patchscope, bridge resolution."""

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from experiments.hopping_too_late import backpatching as bp
from experiments.hopping_too_late import bridge_resolution as erb
from experiments.patchscopes import multihop_cot as mc
from superscopes_nn.engine.api import generate_plain, patchscope

FIXTURE = Path(__file__).parent / "fixtures" / "two_hop_multihop_small.jsonl"
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def queries():
    return bp.load_queries(FIXTURE)


def test_fixture_has_five_queries(queries):
    assert len(queries) == 5 and list(queries.columns) == list(bp.QUERY_FIELDS)
    assert all(isinstance(a, list) for a in queries.answer_aliases)


def test_classify():
    assert bp.classify(True, True, True) == "both_correct_composition_correct"
    assert bp.classify(True, True, False) == "both_correct_composition_wrong"
    assert bp.classify(False, True, True) == "first_hop_wrong"
    assert bp.classify(True, False, True) == "second_hop_wrong"


def test_layer_pairs_and_errors():
    assert bp.layer_pairs(4) == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    with pytest.raises(ValueError, match=r"layers \[7\] out of range"):
        bp.layer_pairs(4, [0, 7])
    with pytest.raises(ValueError, match="source layer > target layer"):
        bp.backpatch_patches(pd.DataFrame({"two_hop_prompt": ["a b"]}), [(1, 2)])
    with pytest.raises(ValueError, match="lack fields"):
        bp.load_queries([{"id": "a"}])
    with pytest.raises(ValueError, match="limit"):
        bp.load_queries(FIXTURE, limit=0)


def test_generate_plain_batched_equals_single(model, queries):
    prompts = queries.two_hop_prompt.tolist() + queries.first_hop_prompt.tolist()
    assert generate_plain(model, prompts, 4) == generate_plain(model, prompts, 4, max_batch_size=1)


def test_backpatch_batched_equals_one_at_a_time(model, queries):
    pairs = bp.layer_pairs(4)
    patches = bp.backpatch_patches(queries, pairs)
    assert len(patches) == 5 * 6
    batched = patchscope(model, patches, max_new_tokens=4)
    single = patchscope(model, patches, max_new_tokens=4, max_batch_size=1)
    assert batched.token_ids.tolist() == single.token_ids.tolist()
    assert (batched.source_layer > batched.target_layer).all()
    assert (batched.target_position == batched.source_position).all()  # the same last token


def test_backpatching_frame_and_summary(model, queries):
    df = bp.backpatching(model, queries, max_new_tokens=4, population="all")
    assert list(df.columns) == bp.BACKPATCH_COLUMNS
    assert len(df) == 5 * 6 and set(df.id) == set(queries.id)
    assert df.correct.dtype == bool and set(df.category) <= set(bp.CATEGORIES)
    hops = df.attrs["hops"]
    assert list(hops.columns) == bp.HOP_COLUMNS and len(hops) == 5
    s = bp.summarize(df)
    assert sum(s["categories"].values()) == 5
    assert 0 <= s["n_fixed"] <= s["n_wrong"] <= 5
    assert 0.0 <= s["fix_rate"] <= 1.0 or s["n_wrong"] == 0
    grid = bp.fix_rate_grid(df)
    assert grid.shape == (4, 4)


def test_paper_population_and_shortcut_prompts(model, queries):
    q = queries.iloc[0]
    assert bp.entity_shortcut_prompt(q) == "The spouse of Imagine is"
    assert bp.relation_shortcut_prompt(q) == "The spouse of the performer of"
    df = bp.backpatching(model, queries, max_new_tokens=3, population="paper")
    hops = df.attrs["hops"]
    want = (hops.first_hop_correct & hops.second_hop_correct & ~hops.two_hop_correct
            & ~hops.entity_shortcut_correct & ~hops.relation_shortcut_correct)
    assert hops.paper_population.tolist() == want.tolist()
    assert set(df.id) == set(hops.id[want])  # only the paper's population is back-patched


def test_fix_chance_on_a_made_up_frame():
    # query a is fixed by its own answer; b's output names a's answer: chance, not a fix
    df = pd.DataFrame({"id": ["a", "b", "c"], "source_layer": [2] * 3, "target_layer": [1] * 3,
                       "interpretation": ["Yoko Ono", "Yoko Ono", "nothing"], "correct": [True, False, False],
                       "two_hop_correct": [False] * 3, "category": ["both_correct_composition_wrong"] * 3})
    t = bp.fix_chance(df, {"a": ["Yoko Ono"], "b": ["Paris"], "c": ["Steventon"]}).iloc[0]
    assert t.raw_count == 1 and t.null_count == pytest.approx(0.5) and t.n == 3


def test_fix_chance_follows_the_match_rule():
    # "Parisian" names Paris under the official substring test, not under whole words
    df = pd.DataFrame({"id": ["a", "b"], "source_layer": [2] * 2, "target_layer": [1] * 2,
                       "interpretation": ["a Parisian cafe", "Parisian"], "correct": [True, False],
                       "two_hop_correct": [False] * 2, "category": ["both_correct_composition_wrong"] * 2})
    answers = {"a": ["Paris"], "b": ["Rome"]}
    sub = bp.fix_chance(df, answers).iloc[0]  # default: substring (HoppingTooLate check_answer_in_pred)
    word = bp.fix_chance(df, answers, match="word").iloc[0]
    assert (sub.raw_count, sub.null_count) == (1, pytest.approx(1.0)) and sub.n == 2  # b names a's answer
    assert (word.raw_count, word.null_count) == (0, 0)
    df.attrs["match"] = "word"
    assert bp.fix_chance(df, answers).iloc[0].raw_count == 0


def test_summary_counts_fixes_on_a_made_up_frame():
    hops = pd.DataFrame({"id": ["a", "b", "c"], "two_hop_correct": [False, False, True],
                         "category": ["both_correct_composition_wrong", "first_hop_wrong",
                                      "both_correct_composition_correct"]})
    df = pd.DataFrame({"id": ["a", "a", "b", "c"], "source_layer": [2, 3, 2, 2], "target_layer": [1, 1, 1, 1],
                       "correct": [False, True, False, True], "two_hop_correct": [False, False, False, True],
                       "category": ["both_correct_composition_wrong"] * 2 + ["first_hop_wrong",
                                                                             "both_correct_composition_correct"]})
    s = bp.summarize(df, hops)
    assert (s["n_wrong"], s["n_fixed"], s["fix_rate"]) == (2, 1, 0.5)
    assert (s["n_wrong_both_known"], s["n_fixed_both_known"], s["fix_rate_both_known"]) == (1, 1, 1.0)
    assert s["best_pair"] == [3, 1] and s["best_pair_fix_rate"] == 1.0


def test_backpatching_script_writes_csv_and_png(model, tmp_path):
    out = tmp_path / "bp"
    bp.main(["--data", str(FIXTURE), "--limit", "3", "--out", str(out), "--max-new-tokens", "3", "--population", "all"],
            model=model)
    df = pd.read_csv(out / "backpatching.csv")
    assert list(df.columns) == bp.BACKPATCH_COLUMNS and len(df) == 3 * 6
    assert df.source_layer.between(1, 3).all() and df.target_layer.between(0, 2).all()
    assert (df.source_layer > df.target_layer).all() and df.correct.isin([True, False]).all()
    assert (out / "backpatching.png").stat().st_size > 1000
    summary = json.loads((out / "backpatching_summary.json").read_text())
    assert summary["n_queries"] == 3 and summary["n_rows"] == 18


# ------------------------------------------------------------------ multi-hop Patchscope


def test_second_hop_template(queries):
    q = queries.iloc[0]
    assert mc.second_hop_template(q) == "The spouse of x is"
    q2 = dict(q, second_hop_prompt="no bridge here")
    assert mc.second_hop_template(q2) == "The spouse of x is"


def test_multihop_cot_columns_and_ranges(model, queries, tmp_path):
    df = mc.multihop_cot(model, queries, layers=[0, 2, 3], max_new_tokens=3, direction="reversed",
                         only_correct=False)
    assert list(df.columns) == mc.COT_COLUMNS
    assert len(df) == 5 * 9 + 5 + 5
    assert set(df.method) == set(mc.METHODS)
    ps = df[df.method == "patchscope"]
    assert ps.source_layer.isin([0, 2, 3]).all() and ps.target_layer.isin([0, 2, 3]).all()
    assert (df[df.method != "patchscope"].source_layer == -1).all()
    assert df[df.method == "cot"].prompt.str.startswith(mc.COT_PREFIX).all()
    s = mc.summarize(df)
    assert s.accuracy.between(0, 1).all() and len(s) == 4
    mc.plot(df, s, tmp_path / "cot.png", "t")
    assert (tmp_path / "cot.png").exists()


def test_multihop_cot_batched_equals_one_at_a_time(model, queries):
    patches = mc.cot_patches(queries.head(3), [(1, 0), (3, 2)], direction="reversed")
    batched = patchscope(model, patches, max_new_tokens=4)
    single = patchscope(model, patches, max_new_tokens=4, max_batch_size=1)
    assert batched.token_ids.tolist() == single.token_ids.tolist()


def test_official_direction_splits_the_query(model, queries):
    q = queries.iloc[0]
    assert mc.second_hop_prefix(q) == "The spouse of" and mc.first_hop_phrase(q) == "the performer of Imagine"
    src, tgt, _ = mc.cot_patches(queries.head(1), [(2, 1)], direction="official")[0]
    assert (src.prompt, src.position, tgt.prompt, tgt.position) == ("The spouse of", -1, "the performer of Imagine", -1)
    two = queries.head(2)
    df = mc.multihop_cot(model, two, layers=[1], max_new_tokens=1, only_correct=False, baselines=False)
    ps = df[df.method == "patchscope"]
    assert len(ps) == len(two) - len(df.attrs["skipped"]) and set(ps.prompt) <= {
        mc.second_hop_prefix(q) for _, q in two.iterrows()}
    assert mc.pair_chance(df) is not None
    kept = mc.multihop_cot(model, two, layers=[1], max_new_tokens=1, baselines=False,
                           baseline_max_new_tokens=3)  # only_correct: both hops known
    hops = kept.attrs["hops"]
    assert set(kept.id) == set(hops.id[hops.hop1_correct & hops.hop2_correct])


def test_multihop_cot_bad_pair(model, queries):
    with pytest.raises(ValueError, match=r"layer 9 in pair \(0, 9\) out of range"):
        mc.multihop_cot(model, queries, pairs=[(0, 9)])


def test_multihop_cot_script(model, tmp_path):
    mc.main(["--data", str(FIXTURE), "--limit", "2", "--layers", "1,3", "--out", str(tmp_path),
             "--max-new-tokens", "3", "--direction", "reversed", "--all-queries"], model=model)
    df = pd.read_csv(tmp_path / "multihop_cot.csv")
    assert list(df.columns) == mc.COT_COLUMNS and len(df) == 2 * 4 + 4
    assert (tmp_path / "multihop_cot.png").exists()


# ------------------------------------------------------------------ bridge resolution


def test_bridge_resolution_per_query_layer(model, queries, caplog):
    extra = dict(queries.iloc[0], id="ambiguous", e1="of", two_hop_prompt="The spouse of the performer of X is")
    qs = pd.concat([queries, pd.DataFrame([extra])], ignore_index=True)
    with caplog.at_level(logging.WARNING):
        df = erb.bridge_resolution(model, qs, max_new_tokens=3)
    assert "ambiguous" in df.attrs["skipped"] and "skipping query ambiguous" in caplog.text
    assert list(df.columns) == erb.BRIDGE_COLUMNS and len(df) == 5 * 4
    row = df[df.id == "spouse_of_performer_imagine"].iloc[0]
    assert row.e1_token == "Imagine" and "Imagine".endswith(row.source_token.strip())
    assert df.decodable.dtype == bool
    s = erb.summarize(df)
    assert s.source_layer.tolist() == [0, 1, 2, 3] and s.decodable.between(0, 1).all() and (s.n == 5).all()


def test_bridge_resolution_script(model, tmp_path):
    erb.main(["--data", str(FIXTURE), "--limit", "2", "--out", str(tmp_path), "--max-new-tokens", "3"], model=model)
    df = pd.read_csv(tmp_path / "bridge_resolution.csv")
    assert list(df.columns) == erb.BRIDGE_COLUMNS and len(df) == 2 * 4
    assert (tmp_path / "bridge_resolution.png").exists()


def test_bridge_resolution_random_arm(model, queries, tmp_path):
    df = erb.bridge_resolution(model, queries, max_new_tokens=3, control="random", control_seed=2)
    rnd = df.attrs["random"]
    assert list(rnd.columns) == erb.RANDOM_COLUMNS and len(rnd) == len(df)
    keys = ["id", "source_layer", "source_position", "source_token"]
    pd.testing.assert_frame_equal(rnd[keys], df[keys])  # the same cells, row for row
    assert set(rnd.mapping) == {"random"} and rnd.mapping_key.str.startswith("random:").all()
    assert (rnd.groupby(["id", "source_layer"]).mapping_key.nunique() == 1).all()
    assert rnd.mapping_key.nunique() == len(rnd)  # one direction per source vector (query, layer)
    assert rnd.interpretation.tolist() != df.interpretation.tolist()  # not the real vectors again
    # the real arm is unchanged by the control; the random arm is scored by the same alias rule
    real = erb.bridge_resolution(model, queries, max_new_tokens=3)
    pd.testing.assert_frame_equal(real, df[erb.BRIDGE_COLUMNS])
    aliases = {q["id"]: erb.bridge_aliases(q) for _, q in queries.iterrows()}
    assert rnd.decodable.tolist() == [erb.alias_match(t, aliases[i]) for t, i in zip(rnd.interpretation, rnd.id)]
    t = erb.bridge_chance(df, FIXTURE, n_boot=50)
    best = t[t.scope == "best of layers"].iloc[0]
    assert best.random_count == rnd.groupby("id").decodable.any().sum()
    assert best.above_random == pytest.approx(best.raw - best.random)
    assert "random" not in erb.bridge_chance(real, FIXTURE, n_boot=50)
    with pytest.raises(ValueError, match="control"):
        erb.bridge_resolution(model, queries, control="shuffled")
    erb.main(["--data", str(FIXTURE), "--limit", "2", "--out", str(tmp_path), "--max-new-tokens", "3",
              "--control", "random"], model=model)
    assert len(pd.read_csv(tmp_path / "bridge_resolution_random.csv")) == 2 * 4


def test_load_queries_stratified_limit():
    qs = bp.load_queries(FIXTURE, limit=3, stratify=True)
    assert len(qs) == 3 and qs.groupby(["r1", "r2"]).size().max() == 1  # one per relation pair first
    assert bp.load_queries(FIXTURE, limit=2).id.tolist() == bp.load_queries(FIXTURE).id.tolist()[:2]
