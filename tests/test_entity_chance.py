"""Entity-resolution chance levels: per layer and best of layers, against a hand-rolled derangement average."""

import numpy as np
import pandas as pd
import pytest

from experiments.patchscopes import entity_resolution as er
from superscopes_nn.science.chance import alias_pairs, layer_chance, rouge_pairs
from superscopes_nn.science.scoring import alias_match, answer_match, rouge_l

ENTS = pd.DataFrame({
    "name": ["Paris", "Google", "Mozart", "Nile"],
    "type": ["city", "company", "person", "river"],
    "description": ["capital of France", "American technology company", "Austrian composer", "river in Africa"],
    "aliases": [["City of Light"], ["Alphabet"], ["Wolfgang Amadeus Mozart"], []],
})
# per entity, per layer 0..2: the continuation (its answer is the part before the first comma)
TEXTS = {
    "Paris": [": capital of France, Google", ": city of light in France", ": a river"],
    "Google": [": American company, Alphabet", ": Austrian composer", ": technology"],
    "Mozart": [": composer, Mozart", ": Paris opera", ": river in Africa"],
    "Nile": [": river in Africa, Nile", ": capital of France", ""],
}


def frame():
    rows = [{"method": "patchscope", "entity": e, "source_layer": l, "interpretation": t}
            for e, ts in TEXTS.items() for l, t in enumerate(ts)]
    rows += [{"method": "input_only", "entity": e, "source_layer": -1, "interpretation": f": {e} is famous"}
             for e in TEXTS]
    df = pd.DataFrame(rows)
    df["answer"] = [er.description_of(t) for t in df.interpretation]
    return df


def by_hand(df, ok):
    """Per layer and best of layers: mean over entities of ok(i's text, j's entity), j = i (raw) and the mean
    over j != i (null), looped without the library's matrices."""
    names = sorted(TEXTS)
    ps = df[df.method == "patchscope"]
    out = {}
    for layer, g in ps.groupby("source_layer"):
        t = dict(zip(g.entity, g.answer if ok.__name__ != "alias" else g.interpretation))
        raw = np.mean([ok(t[i], i) for i in names])
        null = np.mean([np.mean([ok(t[i], j) for j in names if j != i]) for i in names])
        out[layer] = (raw, null)
    col = "interpretation" if ok.__name__ == "alias" else "answer"
    texts = {e: g[col].tolist() for e, g in ps.groupby("entity")}
    raw = np.mean([max(ok(x, i) for x in texts[i]) for i in names])
    null = np.mean([np.mean([max(ok(x, j) for x in texts[i]) for j in names if j != i]) for i in names])
    out["best"] = (raw, null)
    return out


def alias(text, name):
    row = ENTS.set_index("name").loc[name]
    return float(alias_match(text, [name, *row.aliases]))


def rouge(text, name):
    return rouge_l([text], [ENTS.set_index("name").description[name]])[0] if text else 0.0


@pytest.mark.parametrize("metric,ok", [("alias", alias), ("rouge_l", rouge)])
def test_entity_chance_matches_hand_computation(metric, ok):
    df = frame()
    t = er.entity_chance(df, ENTS, metrics=[metric], n_boot=200)
    ps = t[t.method == "patchscope"]
    expected = by_hand(df, ok)
    assert set(ps.source_layer) == {0, 1, 2, "best"}
    for layer, (raw, null) in expected.items():
        r = ps[ps.source_layer == layer].iloc[0]
        assert r.raw == pytest.approx(raw) and r.null == pytest.approx(null), (metric, layer)
        assert r.above == pytest.approx(raw - null) and r.n == 4 and r.n_items == 4
        assert r.raw_lo <= r.raw + 1e-12 and r.raw <= r.raw_hi + 1e-12
    best = ps[ps.scope == "best of layers"].iloc[0]
    assert best.k == 3 and best.source_layer == "best"
    # the best-of-3 null is at least every per-layer null
    assert best.null >= ps[ps.scope == "layer"].null.max() - 1e-12
    base = t[t.method == "input_only"]
    assert len(base) == 1 and base.iloc[0].source_layer == -1 and base.iloc[0].scope == "layer"


def test_entity_chance_known_values_and_sampled_derangements():
    df = frame()
    t = er.entity_chance(df, ENTS, metrics=["alias"], n_boot=200)
    # input only: every text names its own entity and no other -> raw 1, null 0
    base = t[t.method == "input_only"].iloc[0]
    assert (base.raw, base.null) == (1.0, 0.0)
    # layer 0: Paris' text names Google, not Paris; Google's names Alphabet (its own alias); Mozart, Nile their own
    l0 = t[(t.method == "patchscope") & (t.source_layer == 0)].iloc[0]
    assert l0.raw == pytest.approx(0.75) and l0.null == pytest.approx((1 / 3) / 4)
    sampled = er.entity_chance(df, ENTS, metrics=["alias"], n_boot=200, n_derangements=3000)
    s0 = sampled[(sampled.method == "patchscope") & (sampled.source_layer == 0)].iloc[0]
    assert s0.null == pytest.approx(l0.null, abs=0.02)


def test_layer_chance_continuous_and_threshold():
    df = frame()
    df = df[df.method == "patchscope"]
    refs = dict(zip(ENTS.name, ENTS.description))
    cont = layer_chance(df, rouge_pairs(), threshold=None, reference=refs, item="entity", text="answer", n_boot=100)
    thr = layer_chance(df, rouge_pairs(), threshold=0.5, reference=refs, item="entity", text="answer", n_boot=100)
    assert (thr.raw <= 1).all() and ((thr.raw * 4) % 1 == 0).all()  # a rate over 4 entities
    assert not np.allclose(cont.raw, thr.raw)
    with pytest.raises(ValueError, match="at least 2 items"):
        layer_chance(df[df.entity == "Paris"], rouge_pairs(), threshold=None, reference=refs, item="entity")


def test_answer_match_rules():
    # HoppingTooLate check_answer_in_pred: case-insensitive substring, aliases > 1 character
    assert answer_match("the parisian", ["Paris"], "substring") and not answer_match("the parisian", ["Paris"], "word")
    assert not answer_match("a", ["a"], "substring") and not answer_match(None, ["Paris"], "substring")
    # Patchscopes: case-sensitive, also with the spaces removed
    assert answer_match(" U nited States", ["United States"], "patchscopes")
    assert not answer_match("united states", ["United States"], "patchscopes")
    assert answer_match("United States", ["United States"], "word")
    s = alias_pairs("patchscopes")(["Dollar bill", "dollar"], ["Dollar", "Euro"])
    assert s.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="rule must be one of"):
        answer_match("x", ["x"], "regex")
    with pytest.raises(ValueError, match="rule must be one of"):
        alias_pairs("regex")


def test_entity_chance_unknown_entity():
    df = frame()
    with pytest.raises(ValueError, match="not in the entity table"):
        er.entity_chance(df, ENTS[ENTS.name != "Nile"], metrics=["alias"])


def test_bridge_chance_on_a_made_up_frame():
    from pathlib import Path

    from experiments.hopping_too_late.bridge_resolution import bridge_chance

    fixture = Path(__file__).parent / "fixtures" / "two_hop_multihop_small.jsonl"
    ids = ["spouse_of_performer_imagine", "capital_of_country_of_landmark_eiffel_tower",
           "birthplace_of_author_pride_and_prejudice"]
    texts = {ids[0]: [": English musician", ": Lennon, singer"],  # own bridge at layer 1
             ids[1]: [": Jane Austen novel", ": a monument"],    # another query's bridge at layer 0
             ids[2]: [": nothing", ": nothing"]}
    df = pd.DataFrame([{"id": i, "source_layer": l, "interpretation": t} for i in ids for l, t in enumerate(texts[i])])
    t = bridge_chance(df, fixture, n_boot=100)
    best = t[t.scope == "best of layers"].iloc[0]
    assert best.raw_count == pytest.approx(1) and best.null == pytest.approx((0 + 0.5 + 0) / 3)
    l1 = t[t.source_layer == 1].iloc[0]
    assert l1.raw == pytest.approx(1 / 3) and l1.null == 0
