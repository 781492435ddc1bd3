"""Superscopes (Jacobi & Niv 2025): amplify a source vector by alpha before patching it.

A Superscope is a Patchscope whose mapping is ``f(v) = alpha * v``: the MLP output
(or hidden state) of a token is multiplied by an amplifier before it is written
into the entity-description target prompt, so that weak ("superposed") features
become strong enough for the model to name them. ::

    from superscopes_nn import load_model
    from superscopes_nn.science.superscopes import superscope, add_scores, detect_alpha

    model = load_model()                                   # Gemma 3 270M
    df = superscope(model, "Saturday Night Live", position="Live", layers=range(8))
    df = add_scores(df)                                    # one MiniLM call for the whole sweep
    best = detect_alpha(df)                                # one row per (prompt, site, layer, target layer)

Sites are those of :mod:`superscopes_nn.structure.architectures`: ``mlp_out`` is what the MLP
block adds to the residual stream (after Gemma's post-feed-forward norm), so the
amplification is never undone by a scale-invariant norm.

Automatic amplifier detection (:func:`detect_alpha`) picks, per group, the alpha
with the highest score. Score columns made by :func:`add_scores`:

``score_source_cosine``
    the paper's rule: cosine (all-MiniLM-L6-v2) between the *source prompt* and the
    generated interpretation. It peeks at the input text, so it rewards
    interpretations that repeat the prompt's words.
``score_stability``
    does not read the source prompt: the mean cosine between an interpretation and
    the interpretations at the neighbouring alphas (previous and next in sorted
    order) of the same group. An amplifier is chosen where the description is
    stable under small changes of alpha, i.e. where it reflects the vector rather
    than a threshold effect. (Weakness: a degenerate output repeated across alphas
    is also stable.)
``score_reference_cosine``
    only when ``references`` are given: cosine between the interpretation and a
    reference description of the source (e.g. "American sketch comedy show").

Empty interpretations score 0 on every rule (nothing was said); rows whose
``error`` is set (non-finite after amplification) score NaN and are never chosen.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..engine.api import sweep
from .chance import blank, cosine_pairs, null_against
from ..core.deprecation import renamed
from ..core.options import RunOptions
from ..core.specs import ENTITY_PROMPT, Target
from ..core.validate import check_alphas

#: The paper's amplifiers for MLP outputs (alpha = 1 is plain Patchscopes).
MLP_ALPHAS = (1, 3, 6, 9, 12, 15)
#: The paper's three amplifier lists for hidden states (residual stream), as in GalNivs/Superscopes
#: ``code/hidden_states_amplification.ipynb``: fine ``[1.3, 1.5, 1.7, 1.9]`` ("Red Hot Chili Peppers"),
#: mid ``range(2, 7, 1)`` ("Alexander the Great"), wide ``range(3, 24, 3)`` ("Florence and the Machine").
HIDDEN_ALPHAS_FINE = (1.3, 1.5, 1.7, 1.9)
HIDDEN_ALPHAS_MID = (2, 3, 4, 5, 6)
HIDDEN_ALPHAS_WIDE = (3, 6, 9, 12, 15, 18, 21)
#: Union of the hidden-state lists with the alpha = 1 baseline, sorted.
HIDDEN_ALPHAS = tuple(sorted({1.0, *map(float, HIDDEN_ALPHAS_FINE + HIDDEN_ALPHAS_MID + HIDDEN_ALPHAS_WIDE)}))
#: The paper's success threshold on the MiniLM cosine (Figure 3).
SUCCESS_THRESHOLD = 0.3

DEFAULT_BY = ("source_prompt", "site", "source_layer", "target_layer")
SCORE_COLUMNS = ("score_source_cosine", "score_stability", "score_reference_cosine")


#: Target protocols of :func:`superscope`: ``official`` = the paper's code (the amplified vector
#: replaces the target's hidden state, i.e. the layer output, at the target prompt's last token);
#: ``same-site`` = it replaces the same site in the target (e.g. the target's MLP output at the
#: placeholder), so the placeholder's own residual survives the patch.
PROTOCOLS = ("official", "same-site")


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def protocol_target(protocol: str = "official", target_prompt: str = ENTITY_PROMPT, target_layer: int | None = None,
                    placeholder: str = "x") -> Target:
    """The :class:`Target` of a protocol: ``official`` writes the hidden state (``residual``) at the
    last target token (``patchscope_interpret``: ``module="hs"``, ``target_idx = -1``);
    ``same-site`` writes the source's own site at the placeholder."""
    if check_protocol(protocol) == "official":
        return Target(target_prompt, layer=target_layer, position=-1, site="residual")
    return Target(target_prompt, layer=target_layer, placeholder=placeholder)


def last_token_position(tokenizer, prompt: str) -> int:
    """The official notebook's source position: ``find_token_id(prompt, find_last_token(prompt))``,
    i.e. the first token whose decoded string equals the last token's (= the last token unless
    that string also occurs earlier)."""
    ids = list(tokenizer(prompt)["input_ids"])
    pieces = [tokenizer.decode([i]) for i in ids]
    return pieces.index(pieces[-1])


def superscope(model, prompts: Sequence[str] | str, *, sites: Sequence[str] | str = "mlp_out", layers: Iterable[int],
               alphas: Sequence[float] = MLP_ALPHAS, position: int | str | Sequence = -1,
               target_layer: int | None = None, target_prompt: str = ENTITY_PROMPT, placeholder: str = "x",
               protocol: str = "official", options: RunOptions | None = None, **settings) -> pd.DataFrame:
    """Amplify ``sites`` at ``position`` in each prompt by every alpha and let the model describe it.

    A thin wrapper over :func:`superscopes_nn.engine.api.sweep` (same tidy DataFrame):

    - ``sites``: ``"mlp_out"`` (paper's main setting), ``"residual"`` (hidden states),
      ``"attn_out"`` or ``"mlp_in"``, or a list of them (``site=`` is the deprecated spelling);
    - ``alphas``: amplifiers (:data:`MLP_ALPHAS`; :data:`HIDDEN_ALPHAS` for hidden states);
    - ``position``: ``-1`` = last token as this model tokenizes it, an int or a token string (``token=`` is
      the deprecated spelling);
    - ``target_layer``: ``None`` = the source layer (paper, Figure 3), or an int (e.g. 0);
    - ``protocol``: ``"official"`` (default; the vector replaces the target's hidden state at
      the last target token, as the paper's code does) or ``"same-site"`` (it replaces the
      same site at the placeholder); see :func:`protocol_target`;
    - ``options`` / ``settings``: :class:`~superscopes_nn.core.options.RunOptions` and its fields
      (``max_new_tokens``, ``max_batch_size``, ``remote``, ``progress``, ``sampling``, ...).
    """
    sites = renamed(settings, "site", "sites", sites, "mlp_out", "superscope")
    position = renamed(settings, "token", "position", position, -1, "superscope")
    alphas = check_alphas(alphas)
    target = protocol_target(protocol, target_prompt, target_layer, placeholder)
    return sweep(model, prompts, layers=layers, sites=sites, alphas=alphas, position=position, target=target,
                 options=options, **settings)


# ------------------------------------------------------------------ scoring


def _default_cosine(texts_a: list[str], texts_b: list[str], embedder=None) -> np.ndarray:
    from .scoring import embedding_cosine  # written alongside; MiniLM, offline, unique-text dedup

    return embedding_cosine(texts_a, texts_b, embedder=embedder)


def _reference_of(references, prompt: str):
    if references is None:
        return None
    if isinstance(references, Mapping):
        return references.get(prompt)
    if callable(references):
        return references(prompt)
    raise ValueError(f"references must be a dict source_prompt -> description or a callable, got {references!r}")


def _text(x) -> str | None:
    """The interpretation as text; None for error rows (NaN/None)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return str(x)


def add_scores(df: pd.DataFrame, embedder=None, references=None, *, by: Sequence[str] = DEFAULT_BY,
               cosine: Callable | None = None) -> pd.DataFrame:
    """A copy of ``df`` with ``score_source_cosine``, ``score_stability`` (and
    ``score_reference_cosine`` when ``references`` is given) — see the module docstring.

    Every cosine the three rules need is computed in ONE call to
    ``cosine(texts_a, texts_b, embedder=embedder)`` (default
    :func:`superscopes_nn.science.scoring.embedding_cosine`, which embeds each unique text once).
    ``references``: dict ``source_prompt -> description`` or a callable.
    """
    missing = [c for c in ("source_prompt", "alpha", "interpretation", *by) if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks column(s) {missing}; pass a superscope()/sweep() result")
    cosine = cosine or _default_cosine
    out = df.copy()
    n = len(out)
    texts = [_text(t) for t in out["interpretation"]]
    usable = [t is not None and t.strip() != "" for t in texts]
    pairs_a: list[str] = []
    pairs_b: list[str] = []
    src_slot = np.full(n, -1)
    ref_slot = np.full(n, -1)
    for i, (prompt, t) in enumerate(zip(out["source_prompt"], texts)):
        if usable[i]:
            src_slot[i] = len(pairs_a)
            pairs_a.append(str(prompt))
            pairs_b.append(t)
            ref = _reference_of(references, prompt)
            if ref is not None:
                ref_slot[i] = len(pairs_a)
                pairs_a.append(str(ref))
                pairs_b.append(t)
    # stability: neighbours in sorted-alpha order within each group
    neighbours: list[list[tuple[int, int]]] = [[] for _ in range(n)]  # (pair slot or -1, neighbour row)
    keys = list(by)
    pos = np.arange(n)
    grouped = out.assign(_pos=pos).groupby(keys, sort=False, dropna=False) if keys else [((), out.assign(_pos=pos))]
    for _, g in grouped:
        order = g.sort_values("alpha", kind="stable")["_pos"].tolist()
        for k, i in enumerate(order):
            for j in (order[k - 1] if k > 0 else None, order[k + 1] if k + 1 < len(order) else None):
                if j is None:
                    continue
                if usable[i] and usable[j]:
                    neighbours[i].append((len(pairs_a), j))
                    pairs_a.append(texts[i])
                    pairs_b.append(texts[j])
                else:
                    neighbours[i].append((-1, j))
    sims = np.asarray(cosine(pairs_a, pairs_b, embedder=embedder), dtype=float) if pairs_a else np.zeros(0)
    if sims.shape != (len(pairs_a),):
        raise ValueError(f"cosine function returned shape {sims.shape}, expected ({len(pairs_a)},)")

    def pick(slot, i):
        if texts[i] is None:
            return float("nan")
        return float(sims[slot]) if slot >= 0 else 0.0

    out["score_source_cosine"] = [pick(src_slot[i], i) for i in range(n)]
    stab = []
    for i in range(n):
        if texts[i] is None:
            stab.append(float("nan"))
        elif not neighbours[i]:
            stab.append(0.0)  # a group of one alpha has no neighbour to agree with
        else:
            vals = [float(sims[s]) if s >= 0 else (float("nan") if texts[j] is None else 0.0) for s, j in neighbours[i]]
            vals = [v for v in vals if not math.isnan(v)]
            stab.append(float(np.mean(vals)) if vals else 0.0)
    out["score_stability"] = stab
    if references is not None:
        out["score_reference_cosine"] = [
            float("nan") if texts[i] is None else (float(sims[ref_slot[i]]) if ref_slot[i] >= 0 else
                                                   (0.0 if _reference_of(references, out["source_prompt"].iat[i])
                                                    is not None else float("nan")))
            for i in range(n)
        ]
    return out


# ------------------------------------------------------------------ detection


def detect_alpha(df: pd.DataFrame, score: str = "score_source_cosine",
                 by: Sequence[str] = DEFAULT_BY) -> pd.DataFrame:
    """Automatic amplifier detection: per group ``by``, the alpha with the highest ``score``.

    Returns one row per group: the ``by`` columns, ``alpha``, ``score``, ``interpretation``,
    ``runner_up_alpha``, ``runner_up_score``, ``n_alphas``, ``rule`` (= ``score``).
    Ties go to the smallest alpha (deterministic). Rows with a NaN score (error rows)
    are never chosen; a group with no finite score gets ``alpha`` NaN.
    """
    if score not in df.columns:
        raise ValueError(f"score column {score!r} not in DataFrame (columns: {list(df.columns)}); run add_scores() first")
    by = list(by)
    missing = [c for c in by + ["alpha"] if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks grouping column(s) {missing}")
    records = []
    for key, g in df.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip(by, key))
        ok = g[np.isfinite(g[score].astype(float))]
        ranked = ok.assign(_neg=-ok[score].astype(float)).sort_values(["_neg", "alpha"], kind="stable")
        best = ranked.iloc[0] if len(ranked) else None
        second = ranked.iloc[1] if len(ranked) > 1 else None
        rec.update(
            alpha=float(best["alpha"]) if best is not None else float("nan"),
            score=float(best[score]) if best is not None else float("nan"),
            interpretation=best["interpretation"] if best is not None and "interpretation" in g else None,
            runner_up_alpha=float(second["alpha"]) if second is not None else float("nan"),
            runner_up_score=float(second[score]) if second is not None else float("nan"),
            n_alphas=int(g["alpha"].nunique()), rule=score,
        )
        records.append(rec)
    return pd.DataFrame.from_records(records)


def rule_agreement(df: pd.DataFrame, rule_a: str = "score_source_cosine", rule_b: str = "score_stability",
                   by: Sequence[str] = DEFAULT_BY) -> dict:
    """How often two detection rules choose the same alpha: ``{"groups", "agree", "rate"}``."""
    a = detect_alpha(df, rule_a, by).set_index(list(by))["alpha"]
    b = detect_alpha(df, rule_b, by).set_index(list(by))["alpha"]
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    agree = int((both["a"] == both["b"]).sum())
    return {"groups": int(len(both)), "agree": agree, "rate": agree / len(both) if len(both) else float("nan")}


def success_table(df: pd.DataFrame, score: str = "score_source_cosine", threshold: float = SUCCESS_THRESHOLD,
                  patch_alphas: Sequence[float] = (1.0,), super_alphas: Sequence[float] = (3, 6, 9, 12, 15),
                  by_layer: str = "source_layer") -> pd.DataFrame:
    """Figure 3's counts: per layer, prompts with ``score > threshold`` at an alpha in
    ``patch_alphas`` (Patchscopes) or at any alpha in ``super_alphas`` (Superscopes)."""
    ok = df.assign(_succ=df[score].astype(float) > threshold)
    pa, sa = {float(a) for a in patch_alphas}, {float(a) for a in super_alphas}
    rows = []
    for layer, g in ok.groupby(by_layer, sort=True):
        per = g.groupby("source_prompt")
        patch = per.apply(lambda x: bool(x.loc[x.alpha.astype(float).isin(pa), "_succ"].any()), include_groups=False)
        sup = per.apply(lambda x: bool(x.loc[x.alpha.astype(float).isin(sa), "_succ"].any()), include_groups=False)
        rows.append({by_layer: int(layer), "prompts": int(per.ngroups), "patchscopes": int(patch.sum()),
                     "superscopes": int(sup.sum()), "either": int((patch | sup).sum()),
                     "only_superscopes": int((sup & ~patch).sum())})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ chance of one grid


def other_entity_names(exclude: Iterable[str] = ()) -> list[str]:
    """The names of the package's bundled entity set (``superscopes_nn/data/entities.jsonl``),
    minus ``exclude``: references for the chance level of a grid of one prompt."""
    path = Path(__file__).parents[1] / "data" / "entities.jsonl"
    names = [json.loads(line)["name"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    drop = set(exclude)
    return [n for n in names if n not in drop]


def with_chance(df: pd.DataFrame, others: Sequence[str] | None = None, threshold: float = SUCCESS_THRESHOLD,
                embedder=None, score_pairs=None) -> pd.DataFrame:
    """A copy of a scored grid with ``chance_rate``: per cell, the share of ``others`` (other entity
    names; default :func:`other_entity_names`) that its interpretation passes (cosine > ``threshold``).
    Summed over cells it is the number of cells expected to pass by chance -- the chance line of a
    one-prompt grid (:func:`superscopes_nn.science.chance.null_against`)."""
    if others is None:
        others = other_entity_names(df["source_prompt"].unique())
    out = df.copy()
    out["chance_rate"] = null_against(out, others, score_pairs or cosine_pairs(embedder), threshold=threshold)
    return out


def choice_chance(df: pd.DataFrame, others: Sequence[str] | None = None, *, score_pairs=None, embedder=None,
                  score: str = "score_source_cosine", by: Sequence[str] = DEFAULT_BY) -> pd.DataFrame:
    """The α-detection rule's chosen score per group beside its chance level (a best-of-K null).

    Per group ``by`` (one prompt-layer of a grid), :func:`detect_alpha` picks the α whose text is
    closest to the source prompt, the best of K texts. Its null: the best of the same K texts
    against each of ``others`` (other entity names; default :func:`other_entity_names`), i.e. how
    close the closest of these texts comes to a prompt they were not made from.

    Columns: the ``by`` columns, ``k`` (texts), ``alpha``, ``score`` (the chosen one), ``null_mean``
    (mean over others of the best-of-K score), ``null_q95`` (its 95th percentile), ``p_other``
    (share of others whose best-of-K is at least ``score``: an empirical p-value), ``n_others``.
    """
    df = df.reset_index(drop=True)
    chosen = detect_alpha(df, score=score, by=by)
    if others is None:
        others = other_entity_names(df["source_prompt"].unique())
    others = list(others)
    if not others:
        raise ValueError("choice_chance needs at least one other reference")
    texts = [t if isinstance(t, str) else "" for t in df["interpretation"]]
    m = np.asarray((score_pairs or cosine_pairs(embedder))(texts, others), dtype=float)
    m[[blank(t) for t in texts]] = -np.inf
    records = []
    groups = df.groupby(list(by), sort=True, dropna=False)
    for (key, g), row in zip(groups, chosen.itertuples(index=False)):  # the same groups, the same order
        key = key if isinstance(key, tuple) else (key,)
        best = m[g.index.to_numpy()].max(axis=0)
        s = float(row.score)
        records.append({**dict(zip(by, key)), "k": len(g), "alpha": row.alpha, "score": s,
                        "null_mean": float(best.mean()), "null_q95": float(np.quantile(best, 0.95)),
                        "p_other": float((best >= s).mean()) if np.isfinite(s) else float("nan"),
                        "n_others": len(others)})
    return pd.DataFrame.from_records(records)
