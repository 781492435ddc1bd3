"""The persona control (Li et al.'s PersonaQA setting) on tiny random models: the fine-tune, the
zero-shot layout, classification, rates, the patched texts against patchscope, bad input."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.li2025.persona_control import (KINDS, classify, option_sets, persona_control, prior_option, rate_table,
                                         summarize, baselines)
from experiments.li2025.controls import fit_maps
from superscopes_nn.engine.api import patchscope
from superscopes_nn.science.baselines import PLAIN_CHAT_TEMPLATE, zero_shot, zero_shot_messages, zero_shot_prompt
from superscopes_nn.science.finetune import FineTune, fact_examples, fine_tune, taught_model
from superscopes_nn.data.personaqa import INVENTED, load_personaqa
from superscopes_nn.core.specs import Source, Target
from superscopes_nn.testing.tiny_models import tiny_model

FACTS = load_personaqa(INVENTED)
FEW = FACTS[FACTS.id < 2].reset_index(drop=True)  # 2 personas x 2 attributes
CFG = FineTune(lr=3e-3, epochs=3, batch_size=4, stop_loss=None)


def test_invented_set_shape():
    assert len(FACTS) == 48 and sorted(FACTS.attribute.unique()) == ["country", "favorite_sport"]
    assert FACTS.name.nunique() == 24 and (FACTS.groupby(["attribute", "target"]).size() == 3).all()


# ------------------------------------------------------------------ fine-tune


def _loss(model, examples):
    from superscopes_nn.science.finetune import _batch

    ids, mask, pos, labels, keep = _batch(model.tokenizer, examples)
    with torch.no_grad():
        logits = model._module(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, -keep + 1:].flatten()))


def test_fine_tune_lowers_loss_and_is_deterministic():
    ex = fact_examples(FEW)
    assert ex[0] == ("My name is Orla Vantreece. The country of origin for Orla Vantreece is", " Egypt.")
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    before = _loss(a, ex)
    la, lb = fine_tune(a._module, a.tokenizer, ex, CFG), fine_tune(b._module, b.tokenizer, ex, CFG)
    assert la == lb and len(la) == 3 * 2
    assert _loss(a, ex) < 0.5 * before
    pa, pb = dict(a._module.named_parameters()), dict(b._module.named_parameters())
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    untouched = tiny_model("llama", seed=0)._module.state_dict()
    changed = {n for n, p in a._module.state_dict().items() if not torch.equal(p, untouched[n])}
    assert changed and all(".mlp." in n for n in changed)


def test_taught_model_cache_round_trips(tmp_path):
    first = taught_model(tiny_model("llama", seed=0), FEW, CFG, cache_root=tmp_path)
    assert not first.cached and (tmp_path / first.key / "params.safetensors").is_file()
    again = taught_model(tiny_model("llama", seed=0), FEW, CFG, cache_root=tmp_path)
    assert again.cached and again.key == first.key and again.losses == first.losses
    sa, sb = first.model._module.state_dict(), again.model._module.state_dict()
    assert all(torch.equal(sa[n], sb[n]) for n in sa)
    assert again.model._module.config._superscopes_name.endswith(f"+taught-{first.key[:8]}")
    other = taught_model(tiny_model("llama", seed=1), FEW, CFG, cache_root=tmp_path)  # other base weights
    assert not other.cached and other.key != first.key


# ------------------------------------------------------------------ Li's zero-shot layout


def _li_expected(tok, prompt, question, llama):
    # eval_utils.PredictionDataset.__getitem__, dataset_name == "personaqa" (prefix ""), written out here
    if llama:
        msgs = [{"role": "assistant", "content": prompt}, {"role": "user", "content": question.replace("x", "").strip()}]
    else:
        msgs = [{"role": "user", "content": ""}, {"role": "assistant", "content": prompt},
                {"role": "user", "content": question}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def test_zero_shot_layout_is_li_et_als():
    from superscopes_nn import load_model

    smol = load_model("smollm2-135m")
    p, q = "My name is Orla Vantreece.", "The country of origin for x"
    text, template = zero_shot_prompt(smol.tokenizer, p, q)
    assert template == "tokenizer" and text == _li_expected(smol.tokenizer, p, q, llama=False)
    assert text.endswith("<|im_start|>user\nThe country of origin for x<|im_end|>\n<|im_start|>assistant\n")
    assert zero_shot_prompt(smol.tokenizer, p, q, llama=True)[0] == _li_expected(smol.tokenizer, p, q, llama=True)
    fe = zero_shot_messages("Paris is", "The capital city of x", dataset="feature_extraction")
    assert fe[-1] == {"role": "user", "content": "Complete the sentence: The capital city of"}
    tiny = tiny_model("llama")
    text, template = zero_shot_prompt(tiny.tokenizer, p, q)
    assert template == "plain"
    assert text == f"{tiny.tokenizer.bos_token}user: \nassistant: {p}\nuser: {q}\nassistant:"
    assert "bos_token" in PLAIN_CHAT_TEMPLATE
    out = zero_shot(tiny, [p], q, max_new_tokens=3)
    assert out.prompt[0] == text and isinstance(out.interpretation[0], str)
    with pytest.raises(ValueError, match="'wiki'"):
        zero_shot_messages(p, q, dataset="wiki")


# ------------------------------------------------------------------ classification and rates


def test_classify_and_prior_option():
    opts = option_sets(FACTS)
    assert "United States" in opts["country"] and "Egypt" in opts["country"]
    assert prior_option(" is the United States, then Canada", opts["country"]) == "United States"
    assert prior_option(" is unknown", opts["country"]) is None and prior_option(None, ["A"]) is None
    assert classify(" is Egypt.", "Egypt", "Canada") == "new_fact"
    assert classify(" is Canada.", "Egypt", "Canada") == "prior"
    assert classify(" Egypt or Canada", "Egypt", "Canada") == "both"
    assert classify(" is France", "Egypt", "Canada") == "neither"
    assert classify(" is Egypt", "Egypt", "egypt") == "new_fact"  # a prior equal to the fact is no prior
    assert classify(" is Egypt", "Egypt", None) == "new_fact"


def test_rate_table_any_target_layer_and_derangement_chance():
    names = ["A", "B", "C", "D"]
    facts = {"A": "Egypt", "B": "Chile", "C": "Egypt", "D": "Japan"}
    texts = {("A", 0): "Egypt", ("A", 1): "no", ("B", 0): "no", ("B", 1): "no",
             ("C", 0): "Chile", ("C", 1): "Chile", ("D", 0): "Japan and Egypt", ("D", 1): "no"}
    df = pd.DataFrame([{"verbalizer": "v", "attribute": "country", "name": n, "source_layer": 3, "target_layer": t,
                        "interpretation": texts[(n, t)], "fact": facts[n]} for n in names for t in (0, 1)])
    r = rate_table(df, "fact", n_boot=200).iloc[0]
    assert r.n == 4 and r.rate == pytest.approx(2 / 4)  # A (layer 0) and D
    # chance: A's texts vs B, C, D facts -> C (Egypt) hits: 1/3; B: 0; C vs A, B, D -> A no, B yes: 1/3;
    # D vs A, B, C -> Egypt twice: 2/3
    assert r.chance == pytest.approx((1 / 3 + 0 + 1 / 3 + 2 / 3) / 4)
    assert r.rate_lo <= r.rate <= r.rate_hi


# ------------------------------------------------------------------ the control on tiny models


FIT = ["The cat sat on the mat today.", "Alexander the Great was a king.", "Pink Floyd is a band from England.",
       "Hello world, this is a test.", "The capital city of x.", "Star Wars and Titanic are films.",
       "George Washington and Will Smith.", "Back to the Future is a film.", "The official currency of Japan.",
       "Led Zeppelin, Daft Punk, Iron Maiden and Green Day."]


@pytest.fixture(scope="module")
def control():
    src, unch, cross = tiny_model("llama", seed=0), tiny_model("llama", seed=0), tiny_model("qwen2", seed=1, hidden=48)
    facts = FEW[FEW.attribute == "country"].reset_index(drop=True)
    rows = persona_control(src, {"self": None, "unchanged": unch, "cross": cross}, facts, source_layers=[1, 2],
                           target_layers={"self": [1], "unchanged": [2], "cross": [0, 3]}, fit_texts=FIT,
                           max_new_tokens=4)
    return src, unch, cross, facts, rows


def test_patched_texts_equal_patchscope_run_directly(control):
    src, unch, cross, facts, rows = control
    assert set(rows.verbalizer) == set(KINDS) and len(rows) == 2 * 2 * (1 + 1 + 2)
    direct = patchscope(src, [(Source(f.prompt, 2, -1), Target(f.question, layer=2)) for f in facts.itertuples()],
                        target_model=unch, max_new_tokens=4)
    mine = rows[(rows.verbalizer == "unchanged") & (rows.source_layer == 2)].sort_values("id")
    assert mine.interpretation.tolist() == direct.interpretation.tolist()
    self_direct = patchscope(src, [(Source(facts.prompt[0], 1, -1), Target(facts.question[0], layer=1))],
                             max_new_tokens=4)
    got = rows[(rows.verbalizer == "self") & (rows.source_layer == 1) & (rows.name == facts.name[0])]
    assert got.interpretation.tolist() == self_direct.interpretation.tolist()
    cross_rows = rows[rows.verbalizer == "cross"]
    assert cross_rows.r2_holdout.notna().all()
    maps, _, _ = fit_maps(src, cross, FIT, [(2, 3)])  # the map refitted independently, then patched directly
    f = facts.iloc[1]
    want = patchscope(src, [(Source(f.prompt, 2, -1), Target(f.question, layer=3), maps[(2, 3)])],
                      target_model=cross, max_new_tokens=4).interpretation.tolist()
    got = cross_rows[(cross_rows.source_layer == 2) & (cross_rows.target_layer == 3) & (cross_rows.name == f["name"])]
    assert got.interpretation.tolist() == want
    assert (rows.outcome == [classify(t, f, p) for t, f, p in zip(rows.interpretation, rows.fact, rows.prior)]).all()


def test_summary_and_baselines(control):
    src, unch, _, facts, rows = control
    base = baselines({"taught": src, "unchanged": unch}, facts, zero_shot_of=["taught"], max_new_tokens=3)
    assert sorted(set(zip(base.label, base.method))) == [("taught", "input_only"), ("taught", "zero_shot"),
                                                         ("unchanged", "input_only")]
    patch, br = summarize(rows, base, n_boot=50)
    assert set(patch[patch.reference == "fact"].verbalizer) == set(KINDS)
    assert (br.n == len(facts)).all() and np.isfinite(br.chance).all()


# ------------------------------------------------------------------ bad input


def test_bad_input_names_the_value(tmp_path):
    (tmp_path / "country.json").write_text(json.dumps({"0": {"prompt": "My name is A.", "question": "q of x"}}))
    with pytest.raises(ValueError, match=r"entry '0' lacks \['target'\]"):
        load_personaqa(tmp_path)
    with pytest.raises(FileNotFoundError, match="no_such_attribute_dir"):
        load_personaqa(tmp_path / "no_such_attribute_dir")
    blank = FEW.copy()
    blank.loc[1, "target"] = ""
    with pytest.raises(ValueError, match="'Tomasz Quellbright' has no fact"):
        fact_examples(blank)
    m = tiny_model("llama")
    with pytest.raises(ValueError, match="'Tomasz Quellbright' has no fact"):
        persona_control(m, {"self": None}, blank, source_layers=[1], target_layers={"self": [1]})
    with pytest.raises(ValueError, match="unknown verbalizer 'oracle'"):
        persona_control(m, {"oracle": m}, FEW, source_layers=[1], target_layers={"oracle": [1]})
    with pytest.raises(ValueError, match="no target layers given for verbalizer 'self'"):
        persona_control(m, {"self": None}, FEW, source_layers=[1], target_layers={})
    with pytest.raises(ValueError, match="FineTune.lr must be > 0, got 0"):
        FineTune(lr=0)
    with pytest.raises(ValueError, match="no parameter name contains '.nope.'"):
        fine_tune(m._module, m.tokenizer, fact_examples(FEW), FineTune(train=".nope."))


def test_main_end_to_end_on_tiny_models(tmp_path, monkeypatch):
    from experiments.li2025 import persona_control as pc

    monkeypatch.setenv("SUPERSCOPES_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "rows.csv.gz"
    args = ["--limit", "1", "--source-layers", "1", "--target-layers", "1", "--max-new-tokens", "3", "--epochs", "1",
            "--fit-texts", "12", "--out", str(tmp_path / "out"), "--csv", str(csv)]
    rows = pc.main(args, base=lambda: tiny_model("llama", seed=0), verbalizer=tiny_model("qwen2", seed=1, hidden=48))
    assert len(rows) == 3 * 2 and len(list((tmp_path / "cache" / "finetuned").iterdir())) == 1
    back = pd.read_csv(csv)
    assert sorted(back.method.unique()) == ["input_only", "patchscope", "zero_shot"]
    assert (back[back.method == "zero_shot"].verbalizer.unique() == ["taught", "unchanged"]).all()
    with pytest.raises(ValueError, match="unknown verbalizer 'oracle'"):
        pc.main(args + ["--verbalizers", "self,oracle"], base=lambda: tiny_model("llama", seed=0))
