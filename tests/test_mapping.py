"""fit_affine: recovers known maps, has the right shape, drives a cross-model patchscope, rejects bad input."""

import pytest
import torch

from superscopes_nn import Source, Target, patchscope
from superscopes_nn.science.mapping import align_tokens, fit_affine, fit_affine_arrays, fit_affines, paired_states, r2_score
from superscopes_nn.testing.tiny_models import tiny_model

TEXTS = [
    "Syria is a country in the Middle East.",
    "Leonardo DiCaprio is an American actor.",
    "Samsung makes consumer electronics.",
    "Alexander the Great was a king of Macedon.",
    "Pink Floyd is an English rock band.",
    "George Washington was the first president.",
    "Back to the Future is a film.",
    "Led Zeppelin, Daft Punk and Iron Maiden.",
]


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", seed=0, hidden=64), tiny_model("gemma3_text", seed=1, hidden=48)


def test_recovers_known_affine_map():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(5, 8, generator=g), torch.randn(5, generator=g)
    X = torch.randn(200, 8, generator=g)
    f = fit_affine_arrays(X, X @ W.T + b)
    assert tuple(f.weight.shape) == (5, 8)
    assert torch.allclose(f.weight, W, atol=1e-4) and torch.allclose(f.bias, b, atol=1e-4)
    assert r2_score(f, X, X @ W.T + b) > 0.999999
    # ridge shrinks the weights but stays close with plenty of data
    fr = fit_affine_arrays(X, X @ W.T + b, ridge=1.0)
    assert (fr.weight - W).abs().max() < 0.05 and fr.weight.norm() < W.norm()


def test_ridge_with_fewer_pairs_than_dimensions_equals_the_primal_solve():
    # n < d takes the dual n x n solve; the reference is the d x d normal equations written out here
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(12, 40, generator=g, dtype=torch.float64), torch.randn(12, 7, generator=g, dtype=torch.float64)
    f = fit_affine_arrays(X, Y, ridge=0.5)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    W = torch.linalg.solve(Xc.T @ Xc + 0.5 * torch.eye(40, dtype=torch.float64), Xc.T @ Yc).T
    b = Y.mean(0) - W @ X.mean(0)
    assert torch.allclose(f.weight.double(), W, atol=1e-6) and torch.allclose(f.bias.double(), b, atol=1e-6)


def test_fit_affine_on_models_recovers_a_planted_map(pair):
    src, _ = pair
    # target = the same model: the layer-2 map of a model onto itself is the identity
    f = fit_affine(src, src, TEXTS * 2, source_layer=2, target_layer=2, ridge=1e-6)
    X, Y = paired_states(src, src, TEXTS, [(2, 2)])[(2, 2)]
    assert tuple(f.weight.shape) == (64, 64)
    assert r2_score(f, X, Y) > 0.999


def test_shape_and_cross_model_patchscope(pair):
    src, tgt = pair
    fits = fit_affines(src, tgt, TEXTS, [(1, 2), (3, 0)], ridge=1.0)
    assert set(fits) == {(1, 2), (3, 0)}
    f = fits[(1, 2)]
    assert tuple(f.weight.shape) == (48, 64) and tuple(f.bias.shape) == (48,)
    df = patchscope(src, [(Source("Alexander the Great", 1), Target("The capital city of x", layer=2), f)],
                    target_model=tgt, max_new_tokens=3)
    assert len(df) == 1 and df.error.isna().all() and df.mapping[0] == "affine"
    assert isinstance(df.interpretation[0], str)


def test_span_alignment_same_tokenizer_pairs_every_real_token(pair):
    src, tgt = pair
    text = TEXTS[0]
    n = len(src.tokenizer(text)["input_ids"])
    assert align_tokens(src.tokenizer, tgt.tokenizer, text) == [(i, i) for i in range(1, n)]
    assert align_tokens(src.tokenizer, tgt.tokenizer, text, "last") == [(n - 1, n - 1)]


def test_bad_inputs_name_the_value(pair):
    src, tgt = pair
    with pytest.raises(ValueError, match="got 1"):
        fit_affine(src, tgt, TEXTS[:1], 1, 1, ridge=1.0)
    with pytest.raises(ValueError, match="target layer 9"):
        fit_affine(src, tgt, TEXTS, 1, 9)
    with pytest.raises(ValueError, match="source layer -7"):
        fit_affine(src, tgt, TEXTS, -7, 1)
    with pytest.raises(ValueError, match="65"):  # too few pairs for an unregularised 64-d fit
        fit_affine(src, tgt, TEXTS[:3], 1, 1, align="last")
    with pytest.raises(ValueError, match="'middle'"):
        fit_affine(src, tgt, TEXTS, 1, 1, align="middle")
    with pytest.raises(ValueError, match="-1"):
        fit_affine(src, tgt, TEXTS, 1, 1, ridge=-1)
    with pytest.raises(ValueError, match="single string"):
        fit_affine(src, tgt, "one text", 1, 1)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        fit_affine_arrays(torch.zeros(3, 4), torch.zeros(2, 4))
