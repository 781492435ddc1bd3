"""Superscopes: amplification vs plain-HF hooks, amplifier detection, scoring, figure scripts, bad input."""

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the experiments package lives at the repo root
    sys.path.insert(0, str(ROOT))

from superscopes_nn.testing.hook_reference import hf_patch_generate  # noqa: E402
from superscopes_nn.core.specs import ENTITY_PROMPT  # noqa: E402
from superscopes_nn.science.superscopes import (  # noqa: E402
    HIDDEN_ALPHAS, MLP_ALPHAS, add_scores, check_alphas, detect_alpha, rule_agreement, success_table, superscope,
)
from superscopes_nn.testing.tiny_models import tiny_model  # noqa: E402


def word_cosine(a, b, embedder=None):
    """Cheap stand-in for MiniLM: cosine of lower-case bag-of-words vectors."""
    out = []
    for x, y in zip(a, b):
        wx, wy = set(x.lower().replace(",", " ").split()), set(y.lower().replace(",", " ").split())
        out.append(len(wx & wy) / math.sqrt(len(wx) * len(wy)) if wx and wy else 0.0)
    return np.array(out)


class Spy:
    def __init__(self, fn=word_cosine):
        self.fn, self.calls = fn, []

    def __call__(self, a, b, embedder=None):
        self.calls.append((list(a), list(b)))
        return self.fn(a, b)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


# ------------------------------------------------------------------ amplification = multiply, then hook-patch


@pytest.mark.parametrize("arch, site, target_layer, protocol", [
    ("gemma3_text", "mlp_out", None, "official"), ("gemma3_text", "mlp_out", None, "same-site"),
    ("llama", "mlp_out", 0, "same-site"),
    ("llama", "residual", None, "same-site"), ("gemma3_text", "residual", 0, "official"),
    ("llama", "mlp_in", None, "same-site")])
def test_amplification_equals_scaled_hook_patch(arch, site, target_layer, protocol):
    """superscope(alpha) == read the site with a plain hook, multiply by alpha, hook-patch, generate.

    ``official``: the vector replaces the target's hidden state (layer output) at the last target
    token; ``same-site``: it replaces the source's site at the placeholder."""
    model = tiny_model(arch)
    hf = model._module
    alphas = (1, 3, 9.5)
    df = superscope(model, ["Alexander the Great"], site=site, layers=[1, 3], alphas=alphas, protocol=protocol,
                    token=-1, target_layer=target_layer, max_new_tokens=4, progress=False)
    assert len(df) == 2 * len(alphas)
    n_target = len(model.tokenizer(ENTITY_PROMPT)["input_ids"])
    assert (df.target_site == ("residual" if protocol == "official" else site)).all()
    if protocol == "official":
        assert (df.target_position == n_target - 1).all()
    assert (df.target_layer == (df.source_layer if target_layer is None else target_layer)).all()
    ids = model.tokenizer("Alexander the Great")["input_ids"]
    tgt = model.tokenizer(ENTITY_PROMPT)["input_ids"]
    for r in df.itertuples(index=False):
        a = r.alpha
        want = hf_patch_generate(hf, hf, ids, r.source_position, r.source_layer, site, tgt,
                                 r.target_position, r.target_layer, lambda v, a=a: v * a, 4, tgt_site=r.target_site)
        assert r.token_ids == want, (arch, site, r.source_layer, a, target_layer)
    if site != "mlp_in":  # amplification is not a no-op (Gemma's post-MLP norm does not undo it)
        assert df.groupby("source_layer").token_ids.apply(lambda s: len({tuple(t) for t in s})).max() > 1


def test_paper_alpha_constants():
    assert MLP_ALPHAS == (1, 3, 6, 9, 12, 15)
    assert 1.0 in HIDDEN_ALPHAS and 1.3 in HIDDEN_ALPHAS and 21.0 in HIDDEN_ALPHAS
    from superscopes_nn.science.superscopes import HIDDEN_ALPHAS_FINE, HIDDEN_ALPHAS_MID, HIDDEN_ALPHAS_WIDE

    # the notebook's cells: `for amp in [1.3, 1.5, 1.7, 1.9]`, `range(2, 7, 1)`, `range(3, 24, 3)`
    assert (list(HIDDEN_ALPHAS_FINE), list(HIDDEN_ALPHAS_MID), list(HIDDEN_ALPHAS_WIDE)) == (
        [1.3, 1.5, 1.7, 1.9], list(range(2, 7, 1)), list(range(3, 24, 3)))
    assert len(HIDDEN_ALPHAS) == 15
    assert list(HIDDEN_ALPHAS) == sorted(set(HIDDEN_ALPHAS))


# ------------------------------------------------------------------ detection


def frame(rows, prompt="Saturday Night Live", layer=2):
    return pd.DataFrame([{"source_prompt": prompt, "site": "mlp_out", "source_layer": layer, "target_layer": layer,
                          "alpha": float(a), "interpretation": t, "score_source_cosine": s} for a, t, s in rows])


def test_detect_picks_highest_score_and_runner_up():
    df = pd.concat([frame([(1, "a", 0.1), (3, "b", 0.7), (6, "c", 0.5), (9, "d", float("nan"))]),
                    frame([(1, "e", 0.9), (3, "f", 0.2)], layer=5)])
    best = detect_alpha(df)
    assert list(best.source_layer) == [2, 5]
    r = best.iloc[0]
    assert (r.alpha, r.score, r.interpretation, r.runner_up_alpha, r.runner_up_score, r.n_alphas) == \
        (3.0, 0.7, "b", 6.0, 0.5, 4)
    assert best.iloc[1].alpha == 1.0


def test_detect_ties_go_to_smallest_alpha_in_any_order():
    rows = [(12, "x", 0.6), (3, "y", 0.6), (6, "z", 0.6), (1, "w", 0.2)]
    for perm in (rows, rows[::-1], rows[1:] + rows[:1]):
        best = detect_alpha(frame(perm))
        assert best.alpha.iat[0] == 3.0 and best.runner_up_alpha.iat[0] == 6.0


def test_detect_all_nan_group_and_errors():
    best = detect_alpha(frame([(1, None, float("nan")), (3, None, float("nan"))]))
    assert math.isnan(best.alpha.iat[0])
    with pytest.raises(ValueError, match="score_stability"):
        detect_alpha(frame([(1, "a", 0.1)]), score="score_stability")


def test_stability_rule_does_not_need_the_prompt():
    # alpha 1 echoes the prompt's words (paper's rule loves it); alphas 6-12 agree on one description
    df = frame([(1, "saturday night live", 0), (3, "a movie", 0), (6, "american comedy show", 0),
                (9, "american comedy television show", 0), (12, "american comedy show", 0), (15, "zzz qqq", 0)])
    df = df.drop(columns="score_source_cosine")
    spy = Spy()
    scored = add_scores(df, cosine=spy)
    assert detect_alpha(scored).alpha.iat[0] == 1.0
    assert detect_alpha(scored, "score_stability").alpha.iat[0] == 9.0  # both neighbours agree with it
    s = scored.set_index("alpha").score_stability
    assert s[9] > s[6] > s[1] and s[12] > s[15] and s[1] == 0.0
    # stability never reads the source prompt: changing it leaves the column unchanged
    other = add_scores(df.assign(source_prompt="Something Else Entirely"), cosine=word_cosine)
    assert np.allclose(other.score_stability, scored.score_stability)
    agree = rule_agreement(scored)
    assert agree == {"groups": 1, "agree": 0, "rate": 0.0}


def test_reference_rule():
    df = frame([(1, "a city in France", 0), (3, "comedy show on NBC", 0)]).drop(columns="score_source_cosine")
    scored = add_scores(df, references={"Saturday Night Live": "American comedy show"}, cosine=word_cosine)
    assert detect_alpha(scored, "score_reference_cosine").alpha.iat[0] == 3.0
    none = add_scores(df, references={"Other": "x"}, cosine=word_cosine)
    assert none.score_reference_cosine.isna().all()


# ------------------------------------------------------------------ scoring: one embedding call per sweep


def test_add_scores_one_embedding_call_per_sweep(llama):
    df = superscope(llama, ["Pink Floyd", "Star Wars"], layers=[0, 2], alphas=[1, 3, 6], max_new_tokens=4,
                    progress=False)
    df.loc[0, "interpretation"] = None  # an error row
    df.loc[1, "interpretation"] = "  "  # nothing said
    spy = Spy()
    scored = add_scores(df, references={"Pink Floyd": "English rock band"}, cosine=spy)
    assert len(spy.calls) == 1
    a, b = spy.calls[0]
    assert len(a) == len(b)
    assert math.isnan(scored.score_source_cosine.iat[0]) and math.isnan(scored.score_stability.iat[0])
    assert scored.score_source_cosine.iat[1] == 0.0
    ok = scored.iloc[2:]
    want = word_cosine(list(ok.source_prompt), list(ok.interpretation))
    assert np.allclose(ok.score_source_cosine, want)
    assert scored.loc[scored.source_prompt == "Star Wars", "score_reference_cosine"].isna().all()
    assert set(scored.columns) >= {"score_source_cosine", "score_stability", "score_reference_cosine"}
    assert len(scored) == len(df) and "score_source_cosine" not in df  # a copy


def test_add_scores_with_real_scoring_module_fake_embedder():
    pytest.importorskip("superscopes_nn.science.scoring")
    calls = []

    class FakeEmbedder:  # SentenceTransformer-like: encode(list[str]) -> [n, d]
        def encode(self, texts, **kw):
            calls.append(list(texts))
            return np.stack([np.bincount([ord(c) % 16 for c in t.lower()], minlength=16).astype(float) + 1e-3
                             for t in texts])

        def __call__(self, texts, **kw):
            return self.encode(texts)

    df = frame([(1, "comedy", 0), (3, "comedy show", 0), (6, "show", 0)]).drop(columns="score_source_cosine")
    try:
        scored = add_scores(df, embedder=FakeEmbedder())
    except (TypeError, AttributeError) as err:
        pytest.skip(f"scoring.embedding_cosine takes another embedder interface: {err}")
    assert len(calls) == 1, "one embedding call for the whole sweep"
    assert len(calls[0]) == len(set(calls[0])), "unique texts only"
    assert scored.score_source_cosine.notna().all()


# ------------------------------------------------------------------ figure scripts end-to-end (tiny model)


@pytest.mark.parametrize("mod, extra", [("superscopes_fig1", ["--layers", "0-3"]),
                                        ("superscopes_fig2", []),
                                        ("superscopes_alexander", []), ("superscopes_wales", ["--layers", "1", "--protocol", "same-site"])])
def test_single_prompt_scripts(llama, tmp_path, mod, extra):
    import importlib

    from experiments import EXPERIMENTS

    m = importlib.import_module(EXPERIMENTS[mod])
    spy = Spy()
    res = m.main(["--out", str(tmp_path), "--max-new-tokens", "3", *extra], model=llama, cosine=spy)
    assert len(spy.calls) == 2, "one call for the scores, one for the chance matrix (chance line and α-choice null)"
    df = pd.read_csv(res["csv"])
    assert set(df.columns) >= {"source_prompt", "source_token", "source_layer", "site", "alpha", "interpretation",
                               "score_source_cosine", "score_stability", "target_layer"}
    assert res["png"].exists() and res["png"].stat().st_size > 1000
    assert len(df) == len(res["layers"]) * df.alpha.nunique()
    assert len(res["best"]) == len(res["layers"])
    assert "chance_rate" in df and df.chance_rate.between(0, 1).all()
    choice = res["choice"]
    assert list(choice.source_layer) == sorted(res["layers"]) and (choice.k == df.alpha.nunique()).all()
    assert np.allclose(choice.score.to_numpy(), res["best"].score.to_numpy())


def pair_word_cosine(texts, refs):
    """``word_cosine`` of every text with every reference (the chance tables' pair scorer)."""
    return np.array([word_cosine([t] * len(refs), list(refs)) for t in texts]).reshape(len(texts), len(refs))


@pytest.mark.parametrize("protocol", ["official", "same-site"])
def test_fig3_script(llama, tmp_path, capsys, protocol):
    from experiments.superscopes import fig3 as superscopes_fig3

    tsv = tmp_path / "p.tsv"
    tsv.write_text("# comment\nPink Floyd\tloyd\nStar Wars\tWars\nTitanic\tic\n")
    control = "random" if protocol == "official" else "none"
    res = superscopes_fig3.main(["--out", str(tmp_path), "--prompts", str(tsv), "--limit", "2", "--layers", "all",
                                 "--max-new-tokens", "3", "--protocol", protocol, "--control", control, "--boot", "50"],
                                model=llama, cosine=word_cosine, score_pairs=pair_word_cosine)
    df = res["df"]
    assert len(df) == 2 * 4 * 6 and set(df.source_prompt) == {"Pink Floyd", "Star Wars"}
    assert (df.target_layer == df.source_layer).all() and set(df.site) == {"mlp_out"}
    assert set(df.target_site) == ({"residual"} if protocol == "official" else {"mlp_out"})
    if control == "random":
        assert len(res["random_df"]) == len(df) and set(res["random_df"].mapping) == {"random+amplify"}
    assert "score_source_cosine" in df and res["png"].exists() and list(res["table"].source_layer) == [0, 1, 2, 3]
    ch = res["chance"]
    assert {"patchscopes", "superscopes", "alpha=1", "alpha=15"} <= set(ch.arm)
    assert {"raw", "null", "above", "raw_lo", "null_hi"} <= set(ch.columns)
    det = res["detect"].set_index("source_layer")
    assert set(det.arm) == {"detect"} and (det.k == 5).all() and "all" in det.index
    from superscopes_nn.science.superscopes import detect_alpha

    chosen = detect_alpha(df[df.alpha >= 3], by=("source_prompt", "source_layer"))
    assert np.isclose(det.loc["all", "raw"], chosen.score.fillna(0).mean())  # the rule's own pick, independently
    assert ("random" in ch) == (control == "random") == ("random" in det)
    if control == "random":  # the rule's pick among the random-vector texts, from the saved scored rows
        rnd = pd.read_csv(next(tmp_path.glob(f"fig3_*_{protocol}_random_scored.csv.gz")))
        picked = detect_alpha(rnd[rnd.alpha >= 3], by=("source_prompt", "source_layer"))
        assert np.isclose(det.loc["all", "random"], picked.score.fillna(0).mean())
        assert np.isclose(det.loc["all", "above_random"], det.loc["all", "raw"] - det.loc["all", "random"])
    out = capsys.readouterr().out
    assert "patchscopes" in out and "superscopes" in out
    # re-scoring the saved raw CSVs (no model) gives the same tables
    raw = tmp_path / f"fig3_tiny-llama_{protocol}_raw.csv.gz"
    raw = raw if raw.exists() else next(tmp_path.glob(f"fig3_*_{protocol}_raw.csv.gz"))
    extra = ["--random-csv", str(raw).replace("_raw", "_random_raw")] if control == "random" else []
    again = superscopes_fig3.main(["--out", str(tmp_path / "re"), "--prompts", str(tsv), "--protocol", protocol,
                                   "--from-csv", str(raw), *extra, "--boot", "50"],
                                  cosine=word_cosine, score_pairs=pair_word_cosine)
    assert again["table"].equals(res["table"])
    assert np.allclose(again["chance"].raw, ch.raw) and np.allclose(again["chance"].null, ch.null)


def test_fig3_script_sampled(llama, tmp_path):
    """``--decoding llama2-chat``: sampled rows under their own file stem and run store; same seed, same rows."""
    import json

    from experiments.superscopes import fig3 as superscopes_fig3
    from superscopes_nn.core.sampling import LLAMA2_CHAT, Sampling

    tsv = tmp_path / "p.tsv"
    tsv.write_text("Pink Floyd\tloyd\nStar Wars\tWars\n")
    argv = ["--prompts", str(tsv), "--layers", "1,2", "--max-new-tokens", "4", "--boot", "20"]
    kw = dict(model=llama, cosine=word_cosine, score_pairs=pair_word_cosine)
    greedy = superscopes_fig3.main(["--out", str(tmp_path / "g"), *argv], **kw)
    res = superscopes_fig3.main(["--out", str(tmp_path), *argv, "--decoding", "llama2-chat", "--seed", "3"], **kw)
    tag = res["summary"]["model"]
    stem = f"fig3_{tag}_official_llama2-chat-s3"
    assert (tmp_path / f"{stem}_raw.csv.gz").exists() and (tmp_path / f"{stem}_summary.json").exists()
    key = Sampling(LLAMA2_CHAT.temperature, LLAMA2_CHAT.top_p, seed=3).key
    config = json.loads((next(tmp_path.glob(f"{stem}--*_source_rows")) / "config.json").read_text())  # + settings
    assert (config["decoding"], config["sampling_seed"], config["sampling"]) == ("llama2-chat", 3, key)
    assert res["summary"]["sampling"] == key and greedy["summary"]["decoding"] == "greedy"
    assert "sampling" not in json.loads((next((tmp_path / "g").glob(f"fig3_{tag}_official--*_source_rows"))
                                         / "config.json").read_text())
    assert res["df"].token_ids.tolist() != greedy["df"].token_ids.tolist()
    again = superscopes_fig3.main(["--out", str(tmp_path / "again"), *argv, "--decoding", "llama2-chat", "--seed", "3"],
                                  **kw)
    assert again["df"].token_ids.tolist() == res["df"].token_ids.tolist()
    with pytest.raises(SystemExit):
        superscopes_fig3.main(["--out", str(tmp_path / "x"), *argv, "--seed", "1"], **kw)  # a seed needs sampling
    with pytest.raises(SystemExit):
        superscopes_fig3.main(["--out", str(tmp_path / "x"), *argv, "--decoding", "llama2-chat", "--remote"], **kw)


def test_single_prompt_script_sampled(llama, tmp_path):
    from experiments.superscopes import fig1 as superscopes_fig1

    argv = ["--out", str(tmp_path), "--max-new-tokens", "3", "--layers", "0-1"]
    res = superscopes_fig1.main([*argv, "--decoding", "llama2-chat"], model=llama, cosine=word_cosine)
    assert "_llama2-chat-s0" in res["csv"].name
    greedy = superscopes_fig1.main(argv, model=llama, cosine=word_cosine)
    assert "llama2-chat" not in greedy["csv"].name
    assert res["df"].interpretation.tolist() != greedy["df"].interpretation.tolist()


def test_fig3_real_prompt_file():
    """The shipped prompt file parses to 48 prompts."""
    from superscopes_nn.data.datasets import load_fig3_prompts

    assert len(load_fig3_prompts()) == 48


def test_success_table_counts():
    df = pd.concat([frame([(1, "", 0.5), (3, "", 0.1)], prompt="A"),
                    frame([(1, "", 0.1), (6, "", 0.31)], prompt="B"),
                    frame([(1, "", 0.2), (15, "", 0.3)], prompt="C")])  # 0.3 is not > 0.3
    t = success_table(df).iloc[0]
    assert (t.prompts, t.patchscopes, t.superscopes, t.either, t.only_superscopes) == (3, 1, 1, 2, 1)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("alphas, match", [([], "empty amplification"), ([1, 0], "got 0"), ([-2], "got -2"),
                                           ([float("nan")], "got nan"), ([1, float("inf")], "got inf"),
                                           ([True], "got True"), (["3"], "got '3'"), ("3", "got '3'")])
def test_bad_alphas(llama, alphas, match):
    with pytest.raises(ValueError, match=match):
        superscope(llama, "Pink Floyd", layers=[0], alphas=alphas, progress=False)
    with pytest.raises(ValueError, match=match):
        check_alphas(alphas)


def test_token_not_found(llama):
    with pytest.raises(ValueError, match="'Zebra' not found in prompt 'Pink Floyd'"):
        superscope(llama, "Pink Floyd", layers=[0], token="Zebra", progress=False)


def test_missing_prompt_file(tmp_path, llama):
    from experiments.superscopes import fig3 as superscopes_fig3
    from superscopes_nn.data.datasets import load_fig3_prompts

    missing = tmp_path / "nope.tsv"
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        load_fig3_prompts(missing)
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        superscopes_fig3.main(["--prompts", str(missing), "--out", str(tmp_path)], model=llama, cosine=word_cosine)


def test_bad_layers_and_limit(llama, tmp_path, capsys):
    from experiments.superscopes import fig3 as superscopes_fig3
    from experiments.common import model_layers

    with pytest.raises(ValueError, match=r"\[9\] out of range"):
        model_layers("7-9", 9, [])
    with pytest.raises(ValueError, match="bad --layers 'a-b'"):
        model_layers("a-b", 9, [])
    assert model_layers("-3--1", 9) == [6, 7, 8] and model_layers("all", 3) == [0, 1, 2]
    with pytest.raises(SystemExit):
        superscopes_fig3.main(["--limit", "0", "--out", str(tmp_path)], model=llama, cosine=word_cosine)
    assert "--limit must be >= 1, got 0" in capsys.readouterr().err


def test_choice_chance_is_the_best_of_k_against_each_other_name():
    """Independent computation: per layer, max over that layer's texts of a known score matrix."""
    from superscopes_nn.science.superscopes import choice_chance

    df = pd.DataFrame({"source_prompt": "P", "site": "mlp_out", "target_layer": 0,
                       "source_layer": [1, 1, 1, 2, 2, 2], "alpha": [1, 3, 6] * 2,
                       "interpretation": ["a", "b", "c", "d", "e", None],
                       "score_source_cosine": [0.1, 0.5, 0.2, 0.3, 0.05, np.nan]})
    table = {"a": [0.0, 0.6], "b": [0.4, 0.1], "c": [0.2, 0.2], "d": [0.9, 0.0], "e": [0.1, 0.1], "": [5.0, 5.0]}
    seen = []

    def pairs(texts, refs):
        seen.append((list(texts), list(refs)))
        return np.array([table[t] for t in texts])

    out = choice_chance(df, ["X", "Y"], score_pairs=pairs)
    assert seen[0][1] == ["X", "Y"]
    l1, l2 = out.iloc[0], out.iloc[1]
    assert (l1.alpha, l1.score, l1.k) == (3, 0.5, 3) and (l2.alpha, l2.score, l2.k) == (1, 0.3, 3)
    # layer 1: best of a,b,c against X = 0.4, against Y = 0.6; layer 2: d,e (the error row never counts): 0.9, 0.1
    assert np.isclose(l1.null_mean, 0.5) and np.isclose(l2.null_mean, 0.5)
    assert np.isclose(l1.p_other, 0.5) and np.isclose(l2.p_other, 0.5)  # 0.6 >= 0.5; 0.9 >= 0.3
    with pytest.raises(ValueError, match="other reference"):
        choice_chance(df, [], score_pairs=pairs)
