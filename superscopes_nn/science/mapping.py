"""Fit an affine map between the hidden states of two models (for cross-model Patchscopes).

To let model B (the *verbalizer*, ``target_model``) describe a hidden state of
model A (the ``source_model``), the state must first be carried into B's space.
Following Patchscopes (Ghandeharioun et al. 2024, Sec. 4.3), we fit
``h_B ~= W h_A + b`` by least squares on paired hidden states of the *same texts*
read from both models::

    from superscopes_nn import load_model, patchscope, Source, Target
    from superscopes_nn.science.mapping import fit_affine

    gemma, smol = load_model(), load_model("smollm2-135m")
    texts = ["Paris is the capital of France.", ...]          # a few hundred short texts
    f = fit_affine(gemma, smol, texts, source_layer=6, target_layer=10, ridge=1.0)
    f.weight.shape                                            # [576, 640] = [d_target, d_source]
    patchscope(gemma, [(Source("Paris", 6), Target("The capital city of x", 10), f)], target_model=smol)

Pairing the tokens of two tokenizers (``align``):

- ``"last"``: one pair per text, the last token of each (the simplest, needs many texts);
- ``"span"`` (default): every pair of tokens, one from each model, whose character
  spans *end at the same character* of the text (word ends nearly always coincide),
  so one text yields several pairs. Special tokens (BOS, empty spans) and each
  model's first token (an attention sink with an outsized norm) are skipped.

``fit_affine_arrays(X, Y, ridge)`` is the solver on its own (float64 normal
equations with the bias left unpenalised; with fewer pairs than source dimensions
the ridge solve runs in its dual n x n form: the same map, at a fraction of the
cost on a 16384-wide model); ``r2_score`` measures a fitted map on held-out pairs.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..structure.architectures import check_site
from ..engine.api import collect

from ..core.specs import Affine
from ..core.validate import check_layer
from ..structure.info import model_info, model_name

ALIGNMENTS = ("span", "last")


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got a single string")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"texts must be non-empty strings, got {bad[0]!r}")
    if len(texts) < 2:
        raise ValueError(f"need at least 2 texts to fit an affine map, got {len(texts)}")
    return texts


def _check_ridge(ridge) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0 or ridge == float("inf"):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    return float(ridge)


def _offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    return [tuple(o) for o in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]


def align_tokens(source_tokenizer, target_tokenizer, text: str, align: str = "span") -> list[tuple[int, int]]:
    """Index pairs ``(i_source, j_target)`` of tokens of ``text`` that stand for the same place.

    ``"last"``: the last token of each; ``"span"``: tokens whose character spans end
    at the same character (special tokens and each model's position 0 skipped).
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {align!r}; choose one of {', '.join(ALIGNMENTS)}")
    so, to = _offsets(source_tokenizer, text), _offsets(target_tokenizer, text)
    if align == "last":
        return [(len(so) - 1, len(to) - 1)]
    ends_t = {}
    for j, (s, e) in enumerate(to):
        if e > s and j > 0:
            ends_t[e] = j  # the last token ending at e
    pairs = []
    for i, (s, e) in enumerate(so):
        if e > s and i > 0 and e in ends_t:
            pairs.append((i, ends_t[e]))
    # a character end shared by several source tokens (rare) keeps only the last one
    last = {}
    for i, j in pairs:
        last[j] = i
    return sorted((i, j) for j, i in last.items())


def paired_states(source_model, target_model, texts: Sequence[str], layer_pairs: Iterable[tuple[int, int]],
                  site: str = "residual", align: str = "span", remote: bool | str = False) -> dict:
    """Hidden states of the same texts in both models, token-aligned.

    Returns ``{(source_layer, target_layer): (X [n, d_source], Y [n, d_target])}``
    (float64, on the CPU), one row per aligned token pair over all ``texts``. Each text is
    read once per model for all layers.
    """
    texts = _check_texts(texts)
    check_site(site)
    if align not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {align!r}; choose one of {', '.join(ALIGNMENTS)}")
    n_s, n_t = model_info(source_model).n_layers, model_info(target_model).n_layers
    pairs = []
    for p in layer_pairs:
        if not isinstance(p, (tuple, list)) or len(p) != 2:
            raise ValueError(f"layer pairs must be (source_layer, target_layer), got {p!r}")
        pairs.append((check_layer(p[0], n_s, "source", model_name(source_model)),
                      check_layer(p[1], n_t, "target", model_name(target_model))))
    if not pairs:
        raise ValueError("no layer pairs given")
    s_layers = sorted({p[0] for p in pairs})
    t_layers = sorted({p[1] for p in pairs})
    xs: dict = {p: [] for p in pairs}
    ys: dict = {p: [] for p in pairs}
    for text in texts:
        idx = align_tokens(source_model.tokenizer, target_model.tokenizer, text, align)
        if not idx:
            continue
        si = torch.tensor([i for i, _ in idx])
        tj = torch.tensor([j for _, j in idx])
        hs = _checked(source_model, collect(source_model, text, s_layers, [site], remote=remote))
        ht = _checked(target_model, collect(target_model, text, t_layers, [site], remote=remote))
        for ls, lt in pairs:  # the pairs gather on the CPU (the models may sit on other devices)
            xs[(ls, lt)].append(hs[(ls, site)][si.to(hs[(ls, site)].device)].to("cpu", torch.float64))
            ys[(ls, lt)].append(ht[(lt, site)][tj.to(ht[(lt, site)].device)].to("cpu", torch.float64))
    if not any(xs.values()) or not xs[pairs[0]]:
        raise ValueError(f"no aligned token pairs in {len(texts)} texts (align={align!r}); try align='last'")
    return {p: (torch.cat(xs[p]), torch.cat(ys[p])) for p in pairs}


def _checked(model, states: dict) -> dict:
    """``states`` (what :func:`collect` read), refused unless as wide as ``model``'s hidden size: states of
    another width (a server holding a narrower model under the same id) would fit a map that cannot patch it."""
    d = model_info(model).hidden
    for (layer, site), h in states.items():
        if h.shape[-1] != d:
            raise ValueError(f"the {site} states read from {model_name(model)} at layer {layer} are {h.shape[-1]} "
                             f"wide, but its hidden size is {d}: a map fitted on them cannot patch it (does the "
                             f"server run another model under this id?)")
    return states


def fit_affine_arrays(X: torch.Tensor, Y: torch.Tensor, ridge: float = 0.0) -> Affine:
    """Least-squares ``Y ~= X @ W.T + b``: an :class:`Affine` with weight [d_Y, d_X].

    ``ridge`` > 0 adds ``ridge * ||W||^2`` (the bias is not penalised). Without
    ridge the fit needs at least ``d_X + 1`` pairs (else it is underdetermined). The fit
    runs on the CPU in float64 (X, Y may sit anywhere); the map's weight and bias are CPU
    float32 tensors, which the engine moves to each vector's device once per chunk.
    """
    ridge = _check_ridge(ridge)
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must be [n, d] with the same n, got {tuple(X.shape)} and {tuple(Y.shape)}")
    n, d = X.shape
    if n < 2:
        raise ValueError(f"need at least 2 paired vectors, got {n}")
    if ridge == 0 and n < d + 1:
        raise ValueError(f"an unregularised fit needs at least d_source + 1 = {d + 1} paired vectors, got {n}; "
                         f"pass ridge > 0 or more texts")
    X, Y = X.detach().to("cpu", torch.float64), Y.detach().to("cpu", torch.float64)  # gelsd is CPU-only
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my  # centring = an unpenalised bias
    if ridge == 0:
        Wt = torch.linalg.lstsq(Xc, Yc, driver="gelsd").solution  # [d_X, d_Y]
    elif n < d:  # the same solution in its dual form: (Xc'Xc + rI)^-1 Xc' = Xc' (XcXc' + rI)^-1, an n x n solve
        Wt = Xc.T @ torch.linalg.solve(Xc @ Xc.T + ridge * torch.eye(n, dtype=X.dtype), Yc)
    else:
        A = Xc.T @ Xc + ridge * torch.eye(d, dtype=X.dtype)
        Wt = torch.linalg.solve(A, Xc.T @ Yc)
    W = Wt.T.contiguous()
    b = my - W @ mx
    return Affine(W.float(), b.float())


def r2_score(f: Affine, X: torch.Tensor, Y: torch.Tensor) -> float:
    """Coefficient of determination of ``f`` on pairs ``(X, Y)`` (1 = perfect, pooled over dims)."""
    pred = f(X.float()).double()
    Y = Y.double().to(pred.device)
    ss_res = ((Y - pred) ** 2).sum()
    ss_tot = ((Y - Y.mean(0)) ** 2).sum()
    return float(1 - ss_res / ss_tot)


def fit_affines(source_model, target_model, texts: Sequence[str], layer_pairs: Iterable[tuple[int, int]], *,
                site: str = "residual", ridge: float = 0.0, align: str = "span",
                remote: bool | str = False) -> dict:
    """``{(source_layer, target_layer): Affine}`` for several layer pairs, reading each text once."""
    ridge = _check_ridge(ridge)
    data = paired_states(source_model, target_model, texts, layer_pairs, site=site, align=align, remote=remote)
    d_s, d_t = model_info(source_model).hidden, model_info(target_model).hidden
    out = {}
    for pair, (X, Y) in data.items():
        f = fit_affine_arrays(X, Y, ridge)
        assert tuple(f.weight.shape) == (d_t, d_s), (f.weight.shape, d_t, d_s)
        out[pair] = f
    return out


def fit_affine(source_model, target_model, texts: Sequence[str], source_layer: int, target_layer: int,
               site: str = "residual", *, ridge: float = 0.0, align: str = "span",
               remote: bool | str = False) -> Affine:
    """Fit ``h_target(target_layer) ~= W h_source(source_layer) + b`` on paired states of ``texts``.

    Returns an :class:`~superscopes_nn.core.specs.Affine` with weight [d_target, d_source],
    ready to pass as the mapping of a cross-model ``patchscope``/``sweep``.
    """
    fits = fit_affines(source_model, target_model, texts, [(source_layer, target_layer)], site=site,
                       ridge=ridge, align=align, remote=remote)
    return next(iter(fits.values()))
