"""The multi-hop CoT Patchscope's norm-matched random-vector arm (``control="random"``) on a tiny random model."""

from pathlib import Path

import pandas as pd
import pytest

from experiments.patchscopes import multihop_cot as mc
from experiments.common import chance_line
from experiments.common import alias_match, answer_aliases, load_queries
from superscopes_nn.science.random_control import random_rows
from superscopes_nn.engine.rows import resolve
from superscopes_nn.engine.run import run_rows

FIXTURE = Path(__file__).parent / "fixtures" / "two_hop_multihop_small.jsonl"
PAIRS = [(1, 0), (1, 3), (3, 3)]
SAME = ["id", "source_layer", "target_layer", "prompt", "target_prompt"]
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def queries():
    return load_queries(FIXTURE)


def run(model, queries, direction, **kw):
    return mc.multihop_cot(model, queries, pairs=PAIRS, max_new_tokens=3, baseline_max_new_tokens=3,
                           direction=direction, only_correct=False, **kw)


@pytest.fixture(scope="module", params=mc.DIRECTIONS)
def arms(request, model, queries):
    direction = request.param
    return direction, run(model, queries, direction, control="random"), run(model, queries, direction)


def check_random_arm(df, model, queries, direction, seed=0):
    """What a correct random arm is: one row per patched row (same query, layers, prompts, order), a
    ``random:`` mapping, one direction per source vector, the texts of the same resolved rows run with
    :func:`random_rows`, scored by the same match rule."""
    ps, rnd = df[df.method == "patchscope"].reset_index(drop=True), df.attrs["random"]
    assert list(rnd.columns) == mc.RANDOM_COLUMNS and (rnd.method == "random").all()
    assert rnd[SAME].equals(ps[SAME]) and (rnd.source_layer >= 0).all()
    assert all(k.startswith("random:") for k in rnd.mapping_key) and set(rnd.mapping) == {"random"}
    keys = rnd.groupby(["prompt", "source_layer"]).mapping_key.nunique()
    assert (keys == 1).all() and rnd.mapping_key.nunique() == len(keys)  # one direction per source vector
    qs = queries[queries.id.isin(set(ps.id))].reset_index(drop=True)
    want = run_rows(model, random_rows(resolve(model, mc.cot_patches(qs, PAIRS, direction=direction)), model, seed),
                    max_new_tokens=3)
    assert rnd.interpretation.tolist() == want.interpretation.tolist()
    assert rnd.interpretation.tolist() != ps.interpretation.tolist()  # not the real vectors
    aliases = {q["id"]: answer_aliases(q) for _, q in queries.iterrows()}
    assert rnd.correct.tolist() == [alias_match(t, aliases[i], df.attrs["match"]) for t, i in zip(rnd.interpretation, rnd.id)]


def test_random_arm_is_one_to_one_with_the_patched_rows(arms, model, queries):
    direction, df, _ = arms
    check_random_arm(df, model, queries, direction)
    assert len(df.attrs["random"]) == len(queries) * len(PAIRS) - len(df.attrs["skipped"]) * len(PAIRS)


def test_baselines_get_no_random_arm_and_the_real_arm_is_unchanged(arms):
    _, df, plain = arms
    assert set(df.method) == set(mc.METHODS) and "random" not in set(df.method)
    assert list(df.columns) == mc.COT_COLUMNS and df.equals(plain)  # the real arm and baselines as without control
    assert plain.attrs["random"] is None and "random" not in mc.pair_chance(plain)


def test_chance_random_column_is_a_recount_of_the_random_rows(arms):
    _, df, _ = arms
    c = mc.pair_chance(df, n_boot=50).iloc[0]
    rnd = df.attrs["random"]
    assert c.random_count == rnd.groupby("id").correct.any().sum() and c.n == rnd.id.nunique()
    assert c.above_random == pytest.approx(c.raw - c.random)


def test_a_real_vector_random_arm_is_caught(model, queries, monkeypatch):
    # the wrong arm: the real rows run again (no random_rows)
    monkeypatch.setattr(mc, "random_arm", lambda model, rows, options=None, seed=0, **kw: run_rows(model, rows, options,
                                                                                               **kw))
    df = run(model, queries, "official", control="random")
    with pytest.raises(AssertionError):
        check_random_arm(df, model, queries, "official")
    monkeypatch.setattr(mc, "random_arm", lambda model, rows, options=None, seed=0, **kw: run_rows(  # wrong seed
        model, random_rows(rows, model, seed + 1), options, **kw))
    with pytest.raises(AssertionError):
        check_random_arm(run(model, queries, "official", control="random"), model, queries, "official")


def test_random_rows_are_scored_and_counted_like_the_real_ones(model, queries, monkeypatch):
    # random outputs that name their own query's answer (first pair) or another query's (second pair)
    answers = dict(zip(queries.id, queries.answer))
    others = dict(zip(queries.id, queries.answer.tolist()[1:] + queries.answer.tolist()[:1]))

    def fake(model, rows, options=None, seed=0, **kw):
        res = run_rows(model, random_rows(rows, model, seed), options, **kw)
        ids = [i for i in ok_ids for _ in PAIRS]
        texts = [f" {answers[i]}" if j % len(PAIRS) == 0 else f" {others[i]}" if j % len(PAIRS) == 1 else t
                 for j, (i, t) in enumerate(zip(ids, res.interpretation))]
        return res.assign(interpretation=texts)

    ok_ids = [q["id"] for _, q in queries.iterrows() if mc.first_hop_phrase(q) is not None]
    monkeypatch.setattr(mc, "random_arm", fake)
    df = run(model, queries, "official", control="random", match="word")
    rnd = df.attrs["random"]
    assert rnd.correct.tolist() == [j % len(PAIRS) == 0 for j in range(len(rnd))]
    c = mc.pair_chance(df, n_boot=50).iloc[0]
    assert c.random_count == len(ok_ids) == c.n and c.random == 1.0
    assert c.above_random == pytest.approx(c.raw - 1.0)
    s = mc.summarize(df).set_index("method")
    assert s.loc["random_best_pairs"].accuracy == 1.0 and s.loc["random_best_single_pair"].pair == "1,0"


def test_pair_chance_random_on_a_made_up_frame():
    df = pd.DataFrame({"id": ["a", "a", "b", "b", "c", "c"], "method": "patchscope", "source_layer": [0, 1] * 3,
                       "target_layer": [0, 0] * 3, "interpretation": ["Yoko Ono", "x", "x", "x", "x", "x"],
                       "correct": [True, False, False, False, False, False]})
    rnd = df.assign(method="random", interpretation=["x", "x", "Paris", "x", "Paris", "x"])
    answers = {"a": ["Yoko Ono"], "b": ["Paris"], "c": ["Steventon"]}
    c = mc.pair_chance(df, answers, n_boot=50, match="word", random_df=rnd).iloc[0]
    assert (c.raw_count, c.random_count, c.n) == (1, 1, 3) and c.above_random == pytest.approx(0.0)
    assert "random 0.33 [" in chance_line(mc.pair_chance(df, answers, n_boot=50, match="word", random_df=rnd))


def test_bad_control(model, queries):
    with pytest.raises(ValueError, match="control must be one of"):
        run(model, queries, "official", control="shuffled")


@pytest.mark.parametrize("control", ["none", "random"])
def test_script_control_files(model, tmp_path, control, capsys):
    mc.main(["--data", str(FIXTURE), "--limit", "3", "--layers", "1,3", "--out", str(tmp_path), "--max-new-tokens",
             "3", "--all-queries", "--control", control], model=model)
    df = pd.read_csv(tmp_path / "multihop_cot.csv")
    chance = pd.read_csv(tmp_path / "multihop_cot_chance.csv")
    summary = pd.read_csv(tmp_path / "multihop_cot_summary.csv")
    line = capsys.readouterr().out
    assert "raw 0.00 [" in line and "null " in line and "(n = " in line
    if control == "none":
        assert not (tmp_path / "multihop_cot_random.csv").exists() and not list(tmp_path.glob("multihop_cot_random*_rows"))
        assert "random" not in chance and not summary.method.str.startswith("random").any()
        assert "random vector" not in line
        return
    rnd = pd.read_csv(tmp_path / "multihop_cot_random.csv", keep_default_na=False)
    ps = df[df.method == "patchscope"].reset_index(drop=True)
    assert rnd[SAME].astype(str).equals(ps[SAME].astype(str)) and rnd.mapping_key.str.startswith("random:").all()
    assert chance.random_count.iloc[0] == (rnd.correct.astype(str) == "True").groupby(rnd.id).any().sum()
    assert {"random", "random_lo", "random_hi", "above_random", "above_random_lo", "above_random_hi"} <= set(chance)
    assert summary.method.tolist()[-2:] == ["random_best_pairs", "random_best_single_pair"]
    assert "random vector" in line and "above_random " in line
    assert (next(tmp_path.glob("multihop_cot_random*_rows")) / "rows.jsonl").exists()
