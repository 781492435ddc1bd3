"""The norm-matched random-vector control on resolved rows, held to plain-HF hooks, and its chance columns."""

import numpy as np
import pandas as pd
import pytest
import torch

from superscopes_nn.engine.api import patched_logits
from superscopes_nn.science.chance import layer_chance
from superscopes_nn.science.random_control import random_rows, source_seed
from superscopes_nn.testing.hook_reference import hf_patch_logits, hf_read
from superscopes_nn.engine.rows import resolve, sweep_rows
from superscopes_nn.core.specs import Affine, Compose, Source, Target

PROMPTS = ["Pink Floyd", "Star Wars of old"]


def grid(model):
    return sweep_rows(model, PROMPTS, layers=[1, 2], alphas=[1, 3], token=-1,
                      target=Target("cat -> cat; x", layer=0))


def unit(d, seed):
    """The direction written for a source, rebuilt by hand: seeded normal draw, unit length."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    return u / u.norm()


def test_logits_match_hooks_writing_alpha_norm_times_direction(model):
    rows = grid(model)
    rnd = random_rows(rows, model)
    got = patched_logits(model, rnd, exact=True)
    real = patched_logits(model, rows, exact=True)
    hf = model._module
    for r, g, g_real in zip(rnd, got, real):
        u = unit(64, source_seed(r))
        v = hf_read(hf, list(r.source_ids), r.source_layer, r.site)[r.source_position].float()
        alpha = r.mapping.alpha
        want = hf_patch_logits(hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                               list(r.target_ids), r.target_position, r.target_layer,
                               lambda x, u=u, a=alpha: a * x.norm() * u)
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(g, g_real, atol=1e-3)  # the control changes what is written
        w = r.mapping(v)
        assert torch.isclose(w.norm(), alpha * v.norm(), rtol=1e-5)
        assert abs(float(torch.nn.functional.cosine_similarity(w, v, dim=0))) < 0.9


def test_one_direction_per_source_vector_any_order_and_seeded(model):
    rows = grid(model)
    rnd = random_rows(rows, model)
    by_source = {}
    for r in rnd:
        by_source.setdefault(r.source_key, set()).add(r.mapping.base.key)
    assert len(by_source) == 4 and all(len(k) == 1 for k in by_source.values())  # shared over alpha
    assert len({next(iter(k)) for k in by_source.values()}) == 4  # distinct across prompts and layers
    rev = random_rows(rows[::-1], model)[::-1]
    assert [r.mapping.key for r in rev] == [r.mapping.key for r in rnd]
    other = random_rows(rows, model, seed=1)
    assert all(a.mapping.key != b.mapping.key for a, b in zip(rnd, other))
    assert [r.mapping.name for r in rnd] == ["random+amplify"] * len(rnd)
    keep = ("source_prompt", "source_layer", "target_ids", "target_position", "target_layer", "site", "target_site")
    assert all(getattr(a, k) == getattr(b, k) for a, b in zip(rows, rnd) for k in keep)


def test_identity_and_inter_model_maps(model):
    (ident,) = resolve(model, [(Source("Pink Floyd", 2, -1), Target(), None)])
    (r,) = random_rows([ident], model)
    assert r.mapping.name == "random" and r.mapping.alpha == 1.0
    v = torch.randn(64)
    assert torch.isclose(r.mapping(v).norm(), v.norm())
    w, b = torch.randn(64, 64), torch.randn(64)
    (comp,) = random_rows([resolve(model, [(Source("Pink Floyd", 2, -1), Target(), Compose(Affine(w, b), 2.0))])[0]],
                          model)
    assert comp.mapping.alpha == 2.0
    assert torch.isclose(comp.mapping(v).norm(), 2.0 * (w @ v + b).norm(), rtol=1e-5)


def exact_pairs(texts, refs):
    return np.array([[float(t == r) for r in refs] for t in texts])


def test_layer_chance_random_columns():
    df = pd.DataFrame({"entity": list("ABCD") * 2, "source_layer": [0] * 4 + [1] * 4,
                       "interpretation": list("ABxx") + list("xxxx")})
    rnd = df.assign(interpretation=list("Axxx") + list("xxxD"))
    t = layer_chance(df, exact_pairs, threshold=0.5, reference={k: k for k in "ABCD"}, item="entity",
                     random_df=rnd, n_boot=50)
    per = t[t.scope == "layer"].set_index("source_layer")
    assert per.loc[0, "raw"] == 0.5 and per.loc[0, "random"] == 0.25 and per.loc[1, "random"] == 0.25
    best = t[t.scope == "best of layers"].iloc[0]
    assert best.raw == 0.5 and best.random == 0.5 and best.above_random == 0.0


def test_some_pair_chance_random_rows():
    from experiments.common import some_pair_chance

    rows = pd.DataFrame({"id": ["q1", "q1", "q2", "q2", "q3", "q3"], "source_layer": [2, 3] * 3,
                         "target_layer": [0, 0] * 3, "interpretation": ["Paris", "no", "no", "no", "Rome", "no"]})
    refs = {"q1": "Paris", "q2": "Oslo", "q3": "Rome"}
    rnd = rows.assign(interpretation=["no", "no", "no", "Oslo", "no", "no"])
    extra = pd.DataFrame({"id": ["q9"], "source_layer": [2], "target_layer": [0], "interpretation": ["x"]})
    c = some_pair_chance(rows, refs, item="id", rule="substring", n_boot=50,
                         random_rows=pd.concat([rnd, extra])).iloc[0]
    assert c.raw_count == 2 and c.random_count == 1 and c.above_random == pytest.approx(1 / 3)


def test_random_arm_runs_the_same_cells(model):
    from experiments.common import random_arm

    rows = grid(model)
    df = random_arm(model, rows, max_new_tokens=2, seed=3)
    assert len(df) == len(rows) and df.error.isna().all()
    assert df.mapping.unique().tolist() == ["random+amplify"]
    assert df.alpha.tolist() == [r.mapping.alpha for r in rows]
    assert df.source_layer.tolist() == [r.source_layer for r in rows]
    assert all(k.startswith("random:") for k in df.mapping_key)


def test_random_arm_run_store_records_the_seed(model, tmp_path):
    from experiments.common import random_arm

    rows = grid(model)[:2]
    first = random_arm(model, rows, max_new_tokens=2, seed=0, run_dir=tmp_path / "r", config={"x": 1})
    again = random_arm(model, rows, max_new_tokens=2, seed=0, run_dir=tmp_path / "r", config={"x": 1}, resume=True)
    assert again.mapping_key.tolist() == first.mapping_key.tolist()
    with pytest.raises(ValueError, match="control_seed"):  # another seed's rows must not be resumed as this seed's
        random_arm(model, rows, max_new_tokens=2, seed=1, run_dir=tmp_path / "r", config={"x": 1}, resume=True)
