"""Entity resolution's norm-matched random-vector arm (``--control random``) on a tiny random model:
one random row per patched row, a seeded direction with the real vector's norm, scored by the same rule,
and the random columns of ``entity_chance`` recounted by hand."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.patchscopes import entity_resolution as er  # noqa: E402
from superscopes_nn.science.scoring import alias_match, rouge_l  # noqa: E402

ENTITIES = Path(__file__).resolve().parent / "fixtures" / "pscope_entities.jsonl"
KEY = ["entity", "source_layer", "source_position", "source_token", "site", "target_prompt", "target_position",
       "target_layer", "alpha"]


TINY_MODEL = ("gemma3_text", 0)


@pytest.fixture(scope="module")
def captured(model):
    """The rows handed to ``run_rows`` by the real arm and by the random arm, and the result frame."""
    import superscopes_nn.engine.run as run

    seen = {}
    real_run, lib_run = er.run_rows, run.run_rows

    def real(model, rows, *a, **kw):
        seen["real"] = list(rows)
        return real_run(model, rows, *a, **kw)

    def rnd(model, rows, *a, **kw):
        seen["random"] = list(rows)
        return lib_run(model, rows, *a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(er, "run_rows", real)
    mp.setattr(run, "run_rows", rnd)  # experiments.common.random_arm imports it at call time
    try:
        df = er.entity_resolution(model, pd.read_json(ENTITIES, lines=True), limit=3, metrics=("alias",),
                                  max_new_tokens=4, control="random")
    finally:
        mp.undo()
    return seen, df


def check_norm_matched(real_rows, random_rows):
    """What distinguishes the random arm from the real one: same source, target and α, but the written
    vector is ||v|| u with u fixed per source vector, whatever v is (a real-vector arm writes v)."""
    assert len(real_rows) == len(random_rows)
    units = {}
    for r, q in zip(real_rows, random_rows):
        assert (r.source_key, r.target_ids, r.target_layer, r.target_position) == \
               (q.source_key, q.target_ids, q.target_layer, q.target_position)
        assert q.mapping.key.startswith("random:") and q.mapping.alpha == r.mapping.alpha
        v1, v2 = torch.randn(64, generator=torch.Generator().manual_seed(1)), 3 * torch.ones(64)
        w1, w2 = q.mapping(v1), q.mapping(v2)
        assert torch.allclose(w1.norm(), r.mapping(v1).norm()) and torch.allclose(w2.norm(), r.mapping(v2).norm())
        u = w1 / w1.norm()
        assert torch.allclose(u, w2 / w2.norm(), atol=1e-6), "the direction depends on the source vector"
        if q.source_key in units:
            assert torch.allclose(units[q.source_key], u)
        units[q.source_key] = u
    assert len({tuple(u.tolist()) for u in units.values()}) == len(units)  # one direction per source vector


def test_random_rows_match_the_patched_rows(captured):
    seen, df = captured
    check_norm_matched(seen["real"], seen["random"])
    ps, rnd, base = (df[df.method == m].reset_index(drop=True) for m in ("patchscope", "random", "input_only"))
    assert len(ps) == len(rnd) == 3 * 4 and len(base) == 3
    pd.testing.assert_frame_equal(ps[KEY], rnd[KEY])  # one-to-one, same order
    assert rnd.mapping_key.str.startswith("random:").all() and not ps.mapping_key.str.startswith("random:").any()
    assert (rnd.source_layer >= 0).all() and set(rnd.entity) == set(base.entity)  # the baseline has no random arm
    # scored by the same rule as the real rows
    assert rnd.score_alias.tolist() == er.score(rnd.drop(columns="score_alias"), er.entity_table(
        pd.read_json(ENTITIES, lines=True)), ["alias"]).score_alias.tolist()
    # a random direction changes what the tiny model writes (a real-vector arm would repeat the real texts)
    assert (ps.interpretation != rnd.interpretation).any()


def test_a_real_vector_arm_is_caught(model, monkeypatch):
    import superscopes_nn.science.random_control as rc

    monkeypatch.setattr(rc, "random_rows", lambda rows, target_model, seed=0: list(rows))  # the bug: real vectors
    df = er.entity_resolution(model, pd.read_json(ENTITIES, lines=True), limit=2, layers=[1, 2], metrics=(),
                              max_new_tokens=4, control="random")
    ps, rnd = df[df.method == "patchscope"], df[df.method == "random"]
    assert ps.interpretation.tolist() == rnd.interpretation.tolist()
    assert not rnd.mapping_key.str.startswith("random:").any()
    rows = er.sweep_rows(model, ps.entity.unique().tolist(), layers=[1, 2], target=er.Target(er.ENTITY_PROMPT))
    with pytest.raises(AssertionError):
        check_norm_matched(rows, rc.random_rows(rows, model))


def test_random_seed_and_bad_control(model):
    ents = pd.read_json(ENTITIES, lines=True)
    kw = dict(limit=2, layers=[2], metrics=(), max_new_tokens=3, baseline=False, control="random")
    a, b = (er.entity_resolution(model, ents, control_seed=s, **kw) for s in (0, 1))
    ka, kb = (d[d.method == "random"].mapping_key.tolist() for d in (a, b))
    assert all(x != y for x, y in zip(ka, kb))
    with pytest.raises(ValueError, match="control must be one of"):
        er.entity_resolution(model, ents, limit=2, metrics=(), control="shuffle")


def test_main_control_random_and_none(model, tmp_path, capsys):
    args = ["--entities", str(ENTITIES), "--limit", "2", "--max-new-tokens", "3", "--metrics", "alias",
            "--layer-stride", "2"]
    er.main(args + ["--out", str(tmp_path / "r"), "--control", "random"], model=model)
    printed = capsys.readouterr().out
    real = pd.read_csv(tmp_path / "r" / "entity_resolution.csv")
    rnd = pd.read_csv(tmp_path / "r" / "entity_resolution_random.csv")
    assert set(real.method) == {"patchscope", "input_only"} and set(rnd.method) == {"random"}
    assert len(rnd) == (real.method == "patchscope").sum() == 2 * 2
    assert (next((tmp_path / "r").glob("entity_resolution_random*_rows")) / "config.json").exists()
    chance = pd.read_csv(tmp_path / "r" / "entity_resolution_chance.csv")
    ps = chance[chance.method == "patchscope"]
    assert ps.random.notna().all() and chance[chance.method == "input_only"].random.isna().all()
    assert "random vector" in printed and "above random" in printed and "shuffled-entity null" in printed
    s = pd.read_csv(tmp_path / "r" / "entity_resolution_summary.csv")
    assert set(s.method) == {"patchscope", "random", "input_only"}

    er.main(args + ["--out", str(tmp_path / "n")], model=model)
    chance = pd.read_csv(tmp_path / "n" / "entity_resolution_chance.csv")
    assert not any(c.startswith(("random", "above_random")) for c in chance.columns)
    assert not (tmp_path / "n" / "entity_resolution_random.csv").exists()
    assert "random vector" not in capsys.readouterr().out


# ----------------------------------------------------------------- the random columns, by hand

ENTS = pd.DataFrame({
    "name": ["Paris", "Google", "Mozart", "Nile"],
    "type": ["city", "company", "person", "river"],
    "description": ["capital of France", "American technology company", "Austrian composer", "river in Africa"],
    "aliases": [["City of Light"], ["Alphabet"], ["Wolfgang Amadeus Mozart"], []],
})
REAL = {"Paris": [": capital of France, Paris", ": a city"], "Google": [": company", ": Alphabet, company"],
        "Mozart": [": composer", ": river"], "Nile": [": river in Africa", ": Nile"]}
RANDOM = {"Paris": [": Paris, France", ": river in Africa"], "Google": [": nothing", ": technology company"],
          "Mozart": [": Austrian composer", ""], "Nile": [": Nile, river", ": the Nile"]}


def hand_frame():
    rows = [{"method": m, "entity": e, "source_layer": l, "interpretation": t}
            for m, texts in (("patchscope", REAL), ("random", RANDOM)) for e, ts in texts.items()
            for l, t in enumerate(ts)]
    rows += [{"method": "input_only", "entity": e, "source_layer": -1, "interpretation": f": {e}"} for e in REAL]
    df = pd.DataFrame(rows)
    df["answer"] = [er.description_of(t) for t in df.interpretation]
    return df


def own_alias(text, name):
    return float(alias_match(text, [name, *ENTS.set_index("name").aliases[name]]))


def own_rouge(text, name):
    return rouge_l([text], [ENTS.set_index("name").description[name]])[0] if text else 0.0


@pytest.mark.parametrize("metric,ok,col", [("alias", own_alias, "interpretation"), ("rouge_l", own_rouge, "answer")])
def test_random_columns_by_hand(metric, ok, col):
    df = hand_frame()
    t = er.entity_chance(df, ENTS, metrics=[metric], n_boot=200)
    ps = t[t.method == "patchscope"]
    names = sorted(REAL)
    rnd = df[df.method == "random"]
    per = {l: np.mean([ok(g.set_index("entity")[col][e], e) for e in names]) for l, g in rnd.groupby("source_layer")}
    best = np.mean([max(ok(x, e) for x in rnd[rnd.entity == e][col]) for e in names])
    for layer, want in [*per.items(), ("best", best)]:
        r = ps[ps.source_layer == layer].iloc[0]
        assert r.random == pytest.approx(want), (metric, layer)
        assert r.above_random == pytest.approx(r.raw - want) and r.random_count == pytest.approx(want * 4)
        assert r.random_lo <= r.random + 1e-12 <= r.random_hi + 2e-12
    # the real-arm columns are those of the table without the random arm
    plain = er.entity_chance(df[df.method != "random"], ENTS, metrics=[metric], n_boot=200)
    pd.testing.assert_frame_equal(t[plain.columns], plain)
    assert t[t.method == "input_only"].random.isna().all() and "random" not in plain
    # an explicit random_df is the same as the random rows in the frame
    explicit = er.entity_chance(df[df.method != "random"], ENTS, metrics=[metric], n_boot=200, random_df=rnd)
    pd.testing.assert_frame_equal(explicit, t)


def test_alias_random_known_values():
    t = er.entity_chance(hand_frame(), ENTS, metrics=["alias"], n_boot=200)
    best = t[(t.method == "patchscope") & (t.scope == "best of layers")].iloc[0]
    # real: Paris, Google (Alphabet), Nile name themselves; random: Paris, Nile (Mozart only "composer")
    assert (best.raw_count, best.random_count) == (3, 2) and best.above_random == pytest.approx(0.25)
