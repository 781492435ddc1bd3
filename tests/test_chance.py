"""Chance levels: shuffled-source null (exact and sampled), random-vector rate, bootstrap intervals."""

import numpy as np
import pandas as pd
import pytest
import torch

from superscopes_nn.science.chance import (
    alias_pairs, chance_table, derangement, format_chance, norm_matched_random, random_vector_rows,
)
from superscopes_nn.core.specs import Compose, Target


def exact_pairs(texts, refs):
    """1.0 where the text equals the reference: a scorer whose answers are known by hand."""
    return np.array([[float(t == r) for r in refs] for t in texts])


def grid(texts_by_alpha, layer=1):
    """A frame of items A..D: ``texts_by_alpha[alpha] = [text of A, B, C, D]``."""
    rows = []
    for a, texts in texts_by_alpha.items():
        for item, t in zip("ABCD", texts):
            rows.append({"source_prompt": item, "source_layer": layer, "alpha": float(a), "interpretation": t})
    return pd.DataFrame(rows)


def row(t, arm, layer="all"):
    return t[(t.arm == arm) & (t.source_layer == layer)].iloc[0]


def test_known_answer_real_signal_and_constant_text():
    # alpha 1: every item names itself (4/4, null 0); alpha 3: every text is "A" (raw 1/4, null 1/4)
    df = grid({1: list("ABCD"), 3: list("AAAA")})
    t = chance_table(df, exact_pairs, threshold=0.5, arms={"patch": [1.0], "super": [3.0]}, per_choice=False)
    p, s = row(t, "patch"), row(t, "super")
    assert (p.raw, p.null, p.above) == (1.0, 0.0, 1.0)
    # item A passes against itself only; B, C, D pass against A, one of their 3 other references
    assert s.raw == 0.25 and s.null == pytest.approx(3 * (1 / 3) / 4) and s.above == pytest.approx(0.0)
    assert s.raw_count == 1 and s.null_count == pytest.approx(1.0) and s.n == 4 and s.k == 1


def test_best_of_k_null_grows_with_k():
    # each alpha's text names a different other item: best-of-2 raises the null, not the raw rate
    df = grid({3: list("BCDA"), 6: list("CDAB")})
    t = chance_table(df, exact_pairs, threshold=0.5, arms={"any": None}, per_choice=True)
    one, both = row(t, "alpha=3"), row(t, "any")
    assert one.raw == 0 and one.null == pytest.approx(1 / 3)
    assert both.raw == 0 and both.null == pytest.approx(2 / 3) and both.k == 2
    assert both.above == pytest.approx(-2 / 3) and both.above_hi <= 0


def test_sampled_derangements_agree_with_exact_average():
    rng = np.random.default_rng(0)
    texts = {a: list(rng.choice(list("ABCD"), 4)) for a in (1, 3, 6)}
    df = pd.concat([grid(texts, layer=1), grid({a: v[::-1] for a, v in texts.items()}, layer=2)])
    exact = chance_table(df, exact_pairs, threshold=0.5, per_choice=False)
    mc = chance_table(df, exact_pairs, threshold=0.5, per_choice=False, n_derangements=3000, seed=1)
    assert np.allclose(exact.null, mc.null, atol=0.03)
    assert np.allclose(exact.raw, mc.raw)


def test_per_layer_rows_all_row_and_intervals():
    df = pd.concat([grid({1: list("ABCD")}, layer=1), grid({1: list("ABXX")}, layer=2)])
    t = chance_table(df, exact_pairs, threshold=0.5, per_choice=False, n_boot=500)
    assert list(t.source_layer) == [1, 2, "all"]
    assert list(t.raw) == [1.0, 0.5, 0.75] and list(t.n) == [4, 4, 8]
    a = row(t, "any")
    assert a.raw_lo <= a.raw <= a.raw_hi and a.raw_hi <= 1 and a.raw_lo >= 0.25
    text = format_chance(t)
    assert text.raw.iloc[2].startswith("6.0 [")


def test_random_vector_rate_and_missing_rows():
    df = grid({1: list("ABCD")})
    rnd = grid({1: ["A", "", None, "D"]})  # two random-vector texts hit by luck; '' and None score 0
    t = chance_table(df, exact_pairs, threshold=0.5, per_choice=False, random_df=rnd)
    a = row(t, "any")
    assert a.random == 0.5 and a.above_random == 0.5 and a.random_count == 2


def test_continuous_scores_and_reference_column():
    df = grid({1: ["A", "x", "x", "x"], 3: ["x", "B", "x", "x"]})
    df["answer"] = df.source_prompt
    t = chance_table(df, exact_pairs, threshold=None, reference="answer", per_choice=False)
    assert row(t, "any").raw == 0.5  # mean best score


def test_alias_pairs_against_other_items():
    s = alias_pairs()(["he was king of Macedon", "Paris"], [["Macedon", "Alexander"], "Paris"])
    assert s.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="at least 2 items"):
        chance_table(grid({1: list("ABCD")}).head(1), exact_pairs, threshold=0.5)
    dup = pd.concat([grid({1: list("ABCD")})] * 2)
    with pytest.raises(ValueError, match="more than one row"):
        chance_table(dup, exact_pairs, threshold=0.5)
    with pytest.raises(ValueError, match="selects no alpha"):
        chance_table(grid({1: list("ABCD")}), exact_pairs, threshold=0.5, arms={"x": [7]})
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, np.random.default_rng(0))


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10):
        p = derangement(n, rng)
        assert sorted(p) == list(range(n)) and not np.any(p == np.arange(n))


def test_norm_matched_random_keeps_norm_and_key():
    v = torch.randn(16) * 5
    m = Compose(norm_matched_random(16, seed=3), 6.0)
    out = m(v)
    assert torch.allclose(out.norm(), 6.0 * v.norm(), rtol=1e-5)
    assert not torch.allclose(out / out.norm(), v / v.norm())
    assert norm_matched_random(16, 3).key == norm_matched_random(16, 3).key != norm_matched_random(16, 4).key


def test_random_vector_rows_on_tiny_model():
    from superscopes_nn import run_rows
    from superscopes_nn.testing.tiny_models import tiny_model

    model = tiny_model("llama")
    rows = random_vector_rows(model, ["Pink Floyd", "Star Wars"], layers=[1], alphas=[1, 3], site="mlp_out",
                              target=Target(position=-1, site="residual"))
    assert len(rows) == 4 and {r.mapping.name for r in rows} == {"random+amplify"}
    assert len({r.mapping.base.key for r in rows}) == 2  # one direction per (prompt, layer), shared over alpha
    df = run_rows(model, rows[:2], max_new_tokens=1)
    assert len(df) == 2 and df.error.isna().all()


def test_item_table_ranks_by_margin_over_chance():
    from superscopes_nn.science.chance import item_table

    # A names itself at both alphas; D's texts are "A" (passes only against A: chance, not signal)
    df = grid({1: ["A", "x", "x", "A"], 3: ["A", "B", "x", "A"]})
    t = item_table(df, exact_pairs, threshold=0.5)
    assert t.source_prompt.tolist()[0] == "A" and t.raw.iloc[0] == 2 and t.null.iloc[0] == 0
    d = t.set_index("source_prompt").loc["D"]
    assert d.raw == 0 and d.null == pytest.approx(2 / 3) and d.above < 0


def test_with_chance_on_one_prompt_grid():
    from superscopes_nn.science.superscopes import other_entity_names, with_chance

    names = other_entity_names(exclude=["Pink Floyd"])
    assert "Pink Floyd" not in names and "Alexander the Great" in names and len(names) > 100
    df = pd.DataFrame({"source_prompt": ["Q"] * 3, "interpretation": ["A", "nothing", ""]})
    out = with_chance(df, others=["A", "B"], threshold=0.5, score_pairs=exact_pairs)
    assert out.chance_rate.tolist() == [0.5, 0.0, 0.0]


def test_whitespace_only_text_scores_zero_like_add_scores():
    # a scorer that would give a blank text a high score: the table must not let it count
    def generous(texts, refs):
        return np.array([[1.0 if (t.strip() == "" or t == r) else 0.0 for r in refs] for t in texts])

    df = grid({1: ["A", " \n", "x", "x"]})
    t = chance_table(df, generous, threshold=0.5, per_choice=False)
    a = row(t, "any")
    assert a.raw == 0.25 and a.null == 0.0
