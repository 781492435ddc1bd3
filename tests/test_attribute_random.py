"""The norm-matched random-vector arm of attribute extraction (``control="random"``), on a tiny random Gemma 3."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.patchscopes import attribute_extraction as ae  # noqa: E402
from superscopes_nn.engine.rows import resolve  # noqa: E402
from superscopes_nn.engine.run import run_rows  # noqa: E402
from superscopes_nn.science.scoring import answer_match  # noqa: E402
from superscopes_nn.core.specs import Source, Target  # noqa: E402

SAMPLES = pd.DataFrame({
    "task": ["country_capital_city", "country_capital_city", "country_currency", "country_currency"],
    "subject": ["Syria", "France", "Japan", "Syria"],
    "object": ["Damascus", "Paris", "Yen", "pound"],
    "target_prompt": ["The capital city of x", "The capital city of x", "The official currency of x",
                      "The official currency of x"],
    "source_context": ["We went to Syria last year.", "Paris is in France, they say.", "Japan", "in Syria"],
})
KW = dict(layer_stride=2, max_new_tokens=4, only_correct=False)
KEYS = ["task", "subject", "object", "target_prompt", "source_prompt", "source_layer", "target_layer"]


TINY_MODEL = ("gemma3_text", 0)


@pytest.fixture(scope="module")
def df(model):
    return ae.attribute_extraction(model, SAMPLES, control="random", **KW)


def check_random_arm(df):
    """What a right random arm satisfies; False-making for a broken one (see the test below)."""
    ps, rnd = df[df.method == "patchscope"].reset_index(drop=True), df.attrs["random"]
    assert (rnd.method == "random").all() and len(rnd) == len(ps)
    pd.testing.assert_frame_equal(rnd[KEYS].reset_index(drop=True), ps[KEYS])
    assert rnd.mapping_key.str.startswith("random:").all() and (rnd.mapping == "random").all()
    # one seeded direction per source vector (sample, source layer), shared across target layers
    per_source = rnd.groupby(["task", "subject", "source_layer"]).mapping_key.nunique()
    assert (per_source == 1).all() and rnd.mapping_key.nunique() == len(per_source)
    assert (rnd.interpretation != ps.interpretation).any()  # a random direction writes something else


def test_random_rows_are_the_patched_rows(model, df):
    check_random_arm(df)
    rnd = df.attrs["random"]
    # the same resolved positions as the real arm's rows
    patches = [(Source(ae.crop_context(s.source_context, s.subject), ls, -1),
                Target(s.target_prompt, layer=lt), None)
               for s in SAMPLES.itertuples() for ls in (0, 2) for lt in (0, 2)]
    rows = resolve(model, patches)
    assert rnd.source_position.tolist() == [r.source_position for r in rows]
    assert rnd.target_position.tolist() == [r.target_position for r in rows]
    # scored by the same rule as the real rows
    assert rnd.correct.tolist() == [answer_match(t, [o], "patchscopes") for t, o in zip(rnd.interpretation, rnd.object)]
    assert "input_only" not in set(rnd.method) and (df.method == "input_only").sum() == len(SAMPLES)


def test_real_rows_unchanged_by_the_control(model, df):
    plain = ae.attribute_extraction(model, SAMPLES, **KW)
    assert "random" not in plain.attrs
    pd.testing.assert_frame_equal(plain, df)  # attrs aside, the real and baseline rows are the same
    c = ae.pair_chance(plain, n_boot=50)
    assert "random" not in c and "above_random" not in c


def test_a_wrong_random_arm_is_caught(model, monkeypatch):
    def real_vectors(model, rows, options=None, *, seed=0, **run_kwargs):  # the bug: the real vectors, not random ones
        return run_rows(model, rows, options, **run_kwargs)

    monkeypatch.setattr(ae, "random_arm", real_vectors)
    bad = ae.attribute_extraction(model, SAMPLES, control="random", **KW)
    with pytest.raises(AssertionError):
        check_random_arm(bad)


def test_seed_changes_the_directions_only(model, df):
    again = ae.attribute_extraction(model, SAMPLES, control="random", **KW)
    pd.testing.assert_frame_equal(again.attrs["random"], df.attrs["random"])
    other = ae.attribute_extraction(model, SAMPLES, control="random", control_seed=1, **KW).attrs["random"]
    assert (other.mapping_key != df.attrs["random"].mapping_key).all()
    pd.testing.assert_frame_equal(other[KEYS], df.attrs["random"][KEYS])
    with pytest.raises(ValueError, match="control must be one of"):
        ae.attribute_extraction(model, SAMPLES, control="shuffle")


def test_chance_random_column_is_a_recount(df):
    ps = df[df.method == "patchscope"]
    rnd = df.attrs["random"].copy()
    # make the recount non-trivial: two samples' random rows answer (one of them twice), one real row answers
    rnd.loc[rnd.index[[0, 1]], "interpretation"] = " Damascus is"
    rnd.loc[rnd.index[rnd.subject == "France"][-1], "interpretation"] = "Paris"
    rnd["correct"] = [answer_match(t, [o], "patchscopes") for t, o in zip(rnd.interpretation, rnd.object)]
    fake = df.copy()
    fake.loc[ps.index[ps.subject == "Japan"][0], "interpretation"] = "the Yen"
    c = ae.pair_chance(fake, n_boot=200, random=rnd).iloc[0]
    n = SAMPLES.shape[0]
    hand = rnd.groupby(["task", "subject"]).correct.any()
    assert hand.sum() == 2 and c.random_count == 2 and c.n == n and c.raw_count == 1
    assert c.random == pytest.approx(2 / n) and c.above_random == pytest.approx(1 / n - 2 / n)
    assert c.above_random_lo <= c.above_random <= c.above_random_hi
    # the default takes df.attrs["random"] (here all-wrong rows)
    assert ae.pair_chance(df, n_boot=50).iloc[0].random_count == df.attrs["random"].groupby(
        ["task", "subject"]).correct.any().sum()


def test_main_writes_the_random_rows(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ae, "lre_samples", lambda *a, **k: SAMPLES)
    args = ["--layer-stride", "2", "--max-new-tokens", "3", "--all-samples"]
    df = ae.main(args + ["--out", str(tmp_path / "r"), "--control", "random", "--control-seed", "2"], model=model)
    out = capsys.readouterr().out
    assert "random vector" in out and "above_random" in out
    rnd = pd.read_csv(tmp_path / "r" / "attribute_extraction_random.csv.gz", keep_default_na=False)
    assert len(rnd) == (df.method == "patchscope").sum() and rnd.mapping_key.str.startswith("random:").all()
    assert next((tmp_path / "r").glob("attribute_extraction_random*_rows")).is_dir()
    chance = pd.read_csv(tmp_path / "r" / "attribute_extraction_chance.csv").iloc[0]
    assert chance.random_count == (rnd.correct.astype(str) == "True").groupby([rnd.task, rnd.subject]).any().sum()
    ae.main(args + ["--out", str(tmp_path / "n")], model=model)
    assert "random vector" not in capsys.readouterr().out
    assert not (tmp_path / "n" / "attribute_extraction_random.csv.gz").exists()
    assert "random" not in pd.read_csv(tmp_path / "n" / "attribute_extraction_chance.csv").columns
