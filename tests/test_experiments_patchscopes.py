"""The Patchscopes experiments and the Li et al. (2025) controls, end to end on tiny random models."""

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.patchscopes import attribute_extraction as ae  # noqa: E402
from experiments.li2025 import controls  # noqa: E402
from experiments.patchscopes import entity_resolution as er  # noqa: E402
from experiments.patchscopes import token_identity as ti  # noqa: E402
from superscopes_nn.science import baselines  # noqa: E402
from superscopes_nn.testing.tiny_models import tiny_model  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENTITIES = FIXTURES / "pscope_entities.jsonl"
SAMPLES = pd.DataFrame({
    "task": ["country_capital_city", "country_capital_city", "country_currency", "country_currency"],
    "subject": ["Syria", "France", "Japan", "Syria"],
    "object": ["Damascus", "Paris", "Yen", "pound"],
    "target_prompt": ["The capital city of x", "The capital city of x", "The official currency of x",
                      "The official currency of x"],
})


TINY_MODEL = ("gemma3_text", 0)


@pytest.fixture(scope="module")
def verbalizer():
    return tiny_model("llama", seed=1, hidden=48)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------- token identity


def test_token_identity_last_layer_is_exact(model):
    df = ti.token_identity(model, limit=2)
    assert set(df.method) == set(ti.METHODS)
    cols = {"sentence_id", "position", "source_token", "layer", "method", "predicted_id", "target_id", "correct"}
    assert cols <= set(df.columns)
    s = ti.summarize(df)
    assert s.precision_at_1.between(0, 1).all()
    last = s[s.layer == 3].set_index("method").precision_at_1
    # the logit lens of the last layer is the model's own output; so is patching the last layer at "?"
    assert last["logit_lens"] == 1.0 and last["patchscope"] == 1.0
    assert (s.n == s.n.iloc[0]).all() and s.n.iloc[0] == df[["sentence_id", "position"]].drop_duplicates().shape[0]


def test_token_identity_lens_matches_library_lens(model):
    from superscopes_nn.engine.lens import lens_logits

    lens, _ = ti.lens_predictions(model, "The cat sat on the mat.", [0, 2, 3])
    for p in (1, 4):
        assert lens[:, p].tolist() == lens_logits(model, "The cat sat on the mat.", [0, 2, 3], position=p).argmax(-1).tolist()


def test_token_identity_main_writes_outputs(model, tmp_path, capsys):
    df = ti.main(["--limit", "2", "--layer-stride", "2", "--max-positions", "4", "--out", str(tmp_path)], model=model)
    assert sorted(df.layer.unique()) == [0, 2, 3]
    assert (tmp_path / "token_identity.csv").exists() and (tmp_path / "token_identity.png").stat().st_size > 0
    assert len(pd.read_csv(tmp_path / "token_identity.csv")) == len(df) == 2 * 4 * 3 * 2
    assert "patchscope" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ti.main(["--layer-stride", "0"], model=model)


# ----------------------------------------------------------------- entity resolution


def test_entity_resolution_rows_and_baseline(model):
    ents = pd.read_json(ENTITIES, lines=True)
    df = er.entity_resolution(model, ents, limit=3, metrics=(), max_new_tokens=4)
    ps, base = df[df.method == "patchscope"], df[df.method == "input_only"]
    assert len(ps) == 3 * 4 and len(base) == 3
    assert sorted(ps.source_layer.unique()) == [0, 1, 2, 3] and (ps.source_layer == ps.target_layer).all()
    assert (base.source_layer == -1).all()
    assert set(ps.entity) == set(base.entity) and set(df.type) == {"person", "film"}  # round robin over types
    assert {"interpretation", "answer", "description", "entity"} <= set(df.columns)
    assert er.description_of(": Ancient king of Macedon, Samsung: company") == "Ancient king of Macedon"
    with pytest.raises(ValueError, match="'bleu'"):
        er.score(df, er.entity_table(ents), ["bleu"])
    with pytest.raises(ValueError, match="source layer 7"):
        er.entity_resolution(model, ents, layers=[7], metrics=())


@pytest.mark.skipif(not _has("superscopes_nn.science.scoring"), reason="superscopes_nn.science.scoring not available yet")
def test_entity_resolution_main_scores(model, tmp_path):
    df = er.main(["--entities", str(ENTITIES), "--limit", "2", "--max-new-tokens", "4", "--out", str(tmp_path)],
                 model=model)
    assert df.score_alias.isin([True, False]).all()
    assert df.score_rouge_l.between(0, 1).all() and df.score_cosine.between(-1, 1.0001).all()
    s = pd.read_csv(tmp_path / "entity_resolution_summary.csv")
    assert set(s.method) == {"patchscope", "input_only"} and s.score_alias.between(0, 1).all()
    assert (tmp_path / "entity_resolution.csv").exists() and (tmp_path / "entity_resolution.png").exists()


def test_entity_resolution_main_without_metrics(model, tmp_path):
    er.main(["--entities", str(ENTITIES), "--limit", "2", "--metrics", "", "--max-new-tokens", "3",
             "--layer-stride", "2", "--out", str(tmp_path)], model=model)
    df = pd.read_csv(tmp_path / "entity_resolution.csv")
    assert len(df) == 2 * 2 + 2 and (tmp_path / "entity_resolution.png").exists()


# ----------------------------------------------------------------- attribute extraction


def test_attribute_extraction_official_layers_and_match(model):
    # official run_experiment: range(num_layers - 1) for source and target; the tiny model has 4 layers
    df = ae.attribute_extraction(model, SAMPLES.head(1), max_new_tokens=2, only_correct=False, source="subject")
    ps = df[df.method == "patchscope"]
    assert set(ps.source_layer) == set(ps.target_layer) == {0, 1, 2} and df.attrs["match"] == "patchscopes"
    full = ae.attribute_extraction(model, SAMPLES.head(1), max_new_tokens=2, only_correct=False, source="subject",
                                   all_layers=True, layers=None)
    assert set(full[full.method == "patchscope"].source_layer) == {0, 1, 2, 3}
    assert list(df.attrs["filter"].columns) == ["task", "subject", "sample_id", "object", "baseline_output", "kept"]
    with pytest.raises(ValueError, match="match must be one of"):
        ae.attribute_extraction(model, SAMPLES.head(1), match="regex")


def test_attribute_extraction_pairs_and_summary(model, tmp_path):
    df = ae.attribute_extraction(model, SAMPLES, layer_stride=2, max_new_tokens=4, only_correct=False,
                                 source="subject")
    ps = df[df.method == "patchscope"]
    assert len(ps) == 4 * 2 * 2 and len(df[df.method == "input_only"]) == 4
    assert set(zip(ps.source_layer, ps.target_layer)) == {(0, 0), (0, 2), (2, 0), (2, 2)}
    assert df.correct.isin([True, False]).all()
    s = ae.task_summary(df)
    assert list(s.task) == ["country_capital_city", "country_currency"] and (s.n == 2).all()
    for c in ("acc_best_pair", "acc_task_best_pair", "acc_mean_all_pairs", "input_only_acc"):
        assert s[c].between(0, 1).all()
    assert (s.acc_task_best_pair >= s.acc_best_pair).all()
    ls, lt, acc = ae.best_pair(df)
    assert ls in (0, 2) and lt in (0, 2) and 0 <= acc <= 1
    ae.plot(df, s, tmp_path / "a.png", "t")
    assert (tmp_path / "a.png").stat().st_size > 0


def test_attribute_extraction_official_source_and_only_correct(model):
    assert ae.crop_context(" released in the United States on May 2", "United States") == "released in the United States"
    assert ae.crop_context("", "Syria") == "Syria"
    samples = SAMPLES.assign(source_context=[f"We went to {s} last year." for s in SAMPLES.subject])
    df = ae.attribute_extraction(model, samples, layers=[1], target_layers=[1], max_new_tokens=3, only_correct=False)
    ps = df[df.method == "patchscope"]
    assert all(p == f"We went to {s}" for p, s in zip(ps.source_prompt, ps.subject))
    base = df[df.method == "input_only"]
    kept = ae.attribute_extraction(model, samples, layers=[1], target_layers=[1], max_new_tokens=3)
    assert kept.attrs["n_kept"] == int(base.correct.sum())  # only the samples the model answers itself


def test_attribute_extraction_correct_is_substring():
    assert baselines.contains(" Damascus, the capital", "damascus") and not baselines.contains(None, "x")


def test_attribute_extraction_bad_inputs(model):
    with pytest.raises(ValueError, match="'object'"):
        ae.attribute_extraction(model, SAMPLES.drop(columns="object"))
    with pytest.raises(ValueError, match="'The capital of France'"):
        ae.attribute_extraction(model, SAMPLES.assign(target_prompt="The capital of France"))
    with pytest.raises(ValueError, match="0"):
        ae.attribute_extraction(model, SAMPLES, layer_stride=0)


@pytest.mark.skipif(not _has("superscopes_nn.data.datasets"), reason="superscopes_nn.data.datasets not available yet")
def test_attribute_extraction_main_on_lre(model, tmp_path):
    df = ae.main(["--tasks", "country_capital_city", "--limit", "2", "--layer-stride", "3",
                  "--max-new-tokens", "3",   # the shipped LRE files (no --lre-root)
                  "--out", str(tmp_path), "--all-samples"], model=model)
    assert set(df.task) == {"country_capital_city"} and df.subject.nunique() == 2
    assert (tmp_path / "attribute_extraction.csv").exists() and (tmp_path / "attribute_extraction.png").exists()
    with pytest.raises(ValueError, match="no_such_task"):
        ae.lre_samples(tasks="no_such_task")


# ----------------------------------------------------------------- controls


def test_input_only_fills_the_placeholder(model):
    df = baselines.input_only(model, "The capital city of x", ["Syria", "France"], max_new_tokens=3)
    assert df.prompt.tolist() == ["The capital city of Syria", "The capital city of France"]
    assert df.interpretation.map(lambda t: isinstance(t, str)).all()
    # same text as a plain HF greedy generate
    hf, tok = model._module, model.tokenizer
    import torch

    ids = torch.tensor([tok("The capital city of Syria")["input_ids"]])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                      pad_token_id=tok.pad_token_id)
    new = [t for t in ref[0, ids.shape[1]:].tolist() if t != tok.eos_token_id]
    assert df.interpretation[0] == tok.decode(new, skip_special_tokens=True)
    with pytest.raises(ValueError, match="exactly once, found 0"):
        baselines.fill_placeholder("The capital of France", "Syria")
    with pytest.raises(ValueError, match="2 target prompts for 1 subjects"):
        baselines.input_only(model, ["a x", "b x"], ["Syria"])


def test_verbalizer_vs_source(model, verbalizer, tmp_path):
    texts = [f"{n} is a word in a sentence." for n in ("Syria", "France", "Japan", "Samsung", "Pink Floyd",
                                                        "Titanic", "Will Smith", "George Washington")] * 3
    pairs = controls.proportional_layers(model, verbalizer, [1, 3])
    assert pairs == [(1, 1), (3, 3)]
    df = controls.verbalizer_vs_source(model, verbalizer, SAMPLES, layer_pairs=pairs, fit_texts=texts,
                                       ridge=1.0, max_new_tokens=3)
    assert len(df) == len(SAMPLES) * 2
    assert df.follows.isin(["agree", "verbalizer", "source"]).all()
    assert (df.model != df.target_model).all() and df.n_fit_pairs.gt(0).all()
    dis = df[df.source_correct != df.verbalizer_correct]
    assert ((dis.follows == "verbalizer") == (dis.cross_correct == dis.verbalizer_correct)).all()
    s = controls.summarize_verbalizer(df)
    for c in ("cross_acc", "source_input_only_acc", "verbalizer_input_only_acc"):
        assert s[c].between(0, 1).all()
    controls.plot_verbalizer(s, tmp_path / "v.png", "t")
    assert (tmp_path / "v.png").exists()
    with pytest.raises(ValueError, match="'task'"):
        controls.verbalizer_vs_source(model, verbalizer, SAMPLES.drop(columns="task"), layer_pairs=pairs,
                                      fit_texts=texts)


def test_li_accuracy_any_target_layer_then_mean_over_source_layers():
    df = pd.DataFrame({"source_layer": [0, 0, 0, 0, 1, 1], "target_layer": [0, 1, 0, 1, 0, 0],
                       "task": ["t"] * 6, "subject": ["a", "a", "b", "b", "a", "b"],
                       "cross_correct": [False, True, False, False, True, True]})
    t = controls.li_accuracy(df)
    assert t.accuracy.tolist() == [0.5, 1.0, 0.75] and t.source_layer.iloc[-1] == "mean_over_source_layers"
