"""Back-patching's norm-matched random-vector arm (``control="random"``) on a tiny random model:
row for row with the back-patched rows, built by ``random_rows`` from the very same resolved rows,
scored by the same rule, and counted in the chance table's ``random`` columns."""

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.hopping_too_late import backpatching as bp
from experiments.common import alias_match
from superscopes_nn.science.random_control import random_rows
from superscopes_nn.engine.rows import resolve
from superscopes_nn.engine.run import run_rows

FIXTURE = Path(__file__).parent / "fixtures" / "two_hop_multihop_small.jsonl"
pytestmark = pytest.mark.filterwarnings("ignore")
KEYS = ["id", "source_layer", "target_layer"]


@pytest.fixture(scope="module")
def queries():
    return bp.load_queries(FIXTURE)


@pytest.fixture(scope="module")
def run(model, queries):
    return bp.backpatching(model, queries, max_new_tokens=4, population="all", control="random")


def check_random_arm(model, queries, df, seed=0):
    """What the random arm must be: one row per back-patched row (same query, s, t, in order),
    mapping ``random`` keyed ``random:...``, one direction per source vector (query, s), and the
    outputs of ``random_rows`` over the real arm's own resolved rows (not of the real vectors)."""
    rnd = df.attrs["random"]
    assert list(rnd.columns) == bp.RANDOM_COLUMNS
    assert rnd[KEYS].values.tolist() == df[KEYS].values.tolist()
    assert (rnd.mapping == "random").all() and rnd.mapping_key.str.startswith("random:").all()
    per_source = rnd.groupby(["id", "source_layer"]).mapping_key.nunique()
    assert (per_source == 1).all() and rnd.mapping_key.nunique() == len(per_source)
    rows = resolve(model, bp.backpatch_patches(queries, bp.layer_pairs(4)))
    want = run_rows(model, random_rows(rows, model, seed), max_new_tokens=4)
    assert rnd.interpretation.tolist() == want.interpretation.tolist()
    assert rnd.mapping_key.tolist() == want.mapping_key.tolist()
    real = run_rows(model, rows, max_new_tokens=4)
    assert df.interpretation.tolist() == real.interpretation.tolist()  # the real arm is unchanged
    assert (rnd.interpretation != df.interpretation).mean() > 0.5  # a norm-matched direction is not the vector


def test_random_arm_row_for_row_from_the_same_rows(model, queries, run):
    check_random_arm(model, queries, run)
    plain = bp.backpatching(model, queries, max_new_tokens=4, population="all")
    assert "random" not in plain.attrs and plain.attrs["control"] == "none"
    pd.testing.assert_frame_equal(plain, run)  # the real rows do not depend on the control
    rnd = run.attrs["random"]
    aliases = run.attrs["answers"]
    assert rnd.correct.tolist() == [alias_match(t, aliases[i], "substring") for t, i in zip(rnd.interpretation, rnd.id)]


def test_a_random_arm_of_real_vectors_is_caught(model, queries, monkeypatch):
    def real_vectors(model, rows, *, target_model=None, seed=0, **kw):  # the bug: no random_rows
        return run_rows(model, rows, **kw)

    monkeypatch.setattr(bp, "random_arm", real_vectors)
    wrong = bp.backpatching(model, queries, max_new_tokens=4, population="all", control="random")
    with pytest.raises(AssertionError):
        check_random_arm(model, queries, wrong)


def test_control_seed_changes_the_directions_only(model, queries, run):
    other = bp.backpatching(model, queries, max_new_tokens=4, population="all", control="random", control_seed=1)
    check_random_arm(model, queries, other, seed=1)
    assert set(other.attrs["random"].mapping_key).isdisjoint(run.attrs["random"].mapping_key)
    with pytest.raises(ValueError, match="control must be one of"):
        bp.backpatching(model, queries, control="shuffle")


def test_chance_random_column_is_a_hand_recount(run):
    # answers cut from the random arm's own outputs, so that some random rows "fix" their query
    rnd = run.attrs["random"]
    ids = list(dict.fromkeys(run.id))
    answers = {i: ["qqzzxx"] for i in ids}
    for i in ids[:2]:
        text = next(t for t in rnd.interpretation[rnd.id == i] if isinstance(t, str) and len(t.strip()) >= 3)
        answers[i] = [text.strip()[:3]]
    c = bp.fix_chance(run, answers, n_boot=200).iloc[0]

    def some_pair(df):
        return sum(any(alias_match(t, answers[i], "substring") for t in df.interpretation[df.id == i]) for i in ids)

    assert c.random_count == some_pair(rnd) >= 2 and c.n == len(ids)
    assert c.raw_count == some_pair(run)
    assert c.above_random == pytest.approx(c.raw - c.random)


def test_fix_chance_random_on_a_made_up_frame():
    # b is "fixed" only by a random vector; c's two-hop answer is right: not counted, nor its random row
    base = dict(source_layer=[2] * 3, target_layer=[1] * 3, two_hop_correct=[False, False, True],
                category=["both_correct_composition_wrong"] * 3, id=["a", "b", "c"], error=[None] * 3)
    df = pd.DataFrame(dict(base, interpretation=["Yoko Ono", "nothing", "Steventon"], correct=[True, False, True]))
    rnd = pd.DataFrame(dict(base, interpretation=["noise", "Paris!", "Steventon"], correct=[False, True, True],
                            mapping="random", mapping_key="random:x"))
    answers = {"a": ["Yoko Ono"], "b": ["Paris"], "c": ["Steventon"]}
    df.attrs["random"] = rnd
    c = bp.fix_chance(df, answers).iloc[0]
    assert (c.raw_count, c.random_count, c.n) == (1, 1, 2) and c.above_random == pytest.approx(0.0)
    assert bp.summarize(df, pd.DataFrame({"id": ["a", "b", "c"], "two_hop_correct": [False, False, True],
                                          "category": base["category"]}))["n_fixed_random"] == 1
    del df.attrs["random"]
    assert "random" not in bp.fix_chance(df, answers).columns


def test_script_control_random_and_none(model, tmp_path, capsys):
    args = ["--data", str(FIXTURE), "--limit", "3", "--max-new-tokens", "3", "--population", "all"]
    out = tmp_path / "rnd"
    bp.main(args + ["--out", str(out), "--control", "random"], model=model)
    printed = capsys.readouterr().out
    df, rnd = pd.read_csv(out / "backpatching.csv"), pd.read_csv(out / "backpatching_random.csv")
    assert list(rnd.columns) == bp.RANDOM_COLUMNS and rnd[KEYS].values.tolist() == df[KEYS].values.tolist()
    summary = json.loads((out / "backpatching_summary.json").read_text())
    c = summary["chance"][0]
    assert {"random", "random_lo", "random_hi", "above_random", "random_count"} <= set(c)
    assert c["random_count"] == rnd.groupby("id").correct.any().sum() == summary["n_fixed_random"]
    assert summary["n_rows_random"] == len(rnd) == 18
    for word in ("shuffled-answer null", "random vector", "above null", "above random", "(n=3)"):
        assert word in printed
    assert len((next(out.glob("backpatching_random*_rows")) / "rows.jsonl").read_text().splitlines()) == 18
    (out / "backpatching_random.csv").unlink()
    bp.main(args + ["--out", str(out), "--control", "random", "--resume"], model=model)  # both arms resume
    pd.testing.assert_frame_equal(pd.read_csv(out / "backpatching_random.csv"), rnd)
    capsys.readouterr()

    plain = tmp_path / "none"
    bp.main(args + ["--out", str(plain)], model=model)
    printed = capsys.readouterr().out
    assert not (plain / "backpatching_random.csv").exists() and not list(plain.glob("backpatching_random*_rows"))
    summary = json.loads((plain / "backpatching_summary.json").read_text())
    assert "random" not in summary["chance"][0] and "n_fixed_random" not in summary
    assert "random vector" not in printed and "above null" in printed
    pd.testing.assert_frame_equal(pd.read_csv(plain / "backpatching.csv"), df)
