"""Shared parts of the Superscopes single-prompt scripts (Figures 1 and 2, the hidden-state examples).

Each script names its prompt, token, site, layers, α list and target layer as the official
notebooks do (GalNivs/Superscopes ``code/mlp_outputs_amplification.ipynb`` and
``code/hidden_states_amplification.ipynb``: every call goes through ``patchscope_interpret``,
which writes the amplified vector into the target's hidden state (``module="hs"``) at the
last target token); :func:`run_single_prompt` runs that grid with the official target
(``--protocol official``) or the same-site variant, scores every cell and draws the grid.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from experiments.common import (
    add_decoding, decoding_of, decoding_tag, log, model_layers, parser, pyplot, read_saved_csv, save_csv,
    run_options, save_figure, setup,
)
from superscopes_nn.science.chance import cosine_pairs
from superscopes_nn.science.superscopes import (
    PROTOCOLS, SUCCESS_THRESHOLD, add_scores, choice_chance, detect_alpha, other_entity_names, rule_agreement,
    superscope, with_chance,
)
from superscopes_nn.structure.info import model_info

PAPER_LAYERS = 40  # Llama-2-13b-chat


def scaled_range(paper_lo: int, paper_hi: int, n_layers: int, paper_n: int = PAPER_LAYERS) -> list[int]:
    """Paper layers ``paper_lo..paper_hi`` of a ``paper_n``-layer model mapped onto ``n_layers``
    (floor of the low end, ceil of the high end: at least the scaled span, never empty)."""
    lo = math.floor(paper_lo * n_layers / paper_n)
    hi = math.ceil(paper_hi * n_layers / paper_n)
    return list(range(max(0, lo), min(n_layers - 1, max(hi, lo + 1)) + 1))


# ------------------------------------------------------------------ figures


def grid_figure(df: pd.DataFrame, path: Path, title: str, value: str = "score_source_cosine",
                text_width: int = 22) -> Path:
    """Layers (rows) x alpha (columns) heatmap of ``value`` with the interpretation in each cell."""
    plt = pyplot()

    layers = sorted(df.source_layer.unique())
    alphas = sorted(df.alpha.unique())
    val = np.full((len(layers), len(alphas)), np.nan)
    txt = [["" for _ in alphas] for _ in layers]
    li = {l: i for i, l in enumerate(layers)}
    ai = {a: j for j, a in enumerate(alphas)}
    for r in df.itertuples(index=False):
        i, j = li[r.source_layer], ai[r.alpha]
        val[i, j] = getattr(r, value)
        t = r.interpretation if isinstance(r.interpretation, str) else "(error)"
        t = " ".join("".join(c if c.isprintable() else "·" for c in t).split())
        txt[i][j] = (t[: text_width - 1] + "…") if len(t) > text_width else t
    fig, ax = plt.subplots(figsize=(1.9 * len(alphas) + 2, 0.55 * len(layers) + 1.6))
    im = ax.imshow(val, cmap="viridis", vmin=0, vmax=max(0.6, float(np.nanmax(val)) if np.isfinite(val).any() else 1),
                   aspect="auto")
    for i in range(len(layers)):
        for j in range(len(alphas)):
            v = val[i, j]
            ax.text(j, i, f"{txt[i][j]}\n{v:.2f}" if np.isfinite(v) else txt[i][j], ha="center", va="center",
                    fontsize=6.5, color="white" if not np.isfinite(v) or v < 0.35 else "black")
    ax.set_xticks(range(len(alphas)), [f"α={a:g}" for a in alphas])
    ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers])
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=value.replace("score_", "") + " (MiniLM)", fraction=0.03)
    return save_figure(fig, path, dpi=130)


# ------------------------------------------------------------------ one-prompt grid


def pair_scorer(cosine: Callable | None, embedder=None) -> Callable:
    """``score(texts, refs)`` (every text against every reference) from a row-wise ``cosine(a, b)``
    such as the one ``add_scores`` takes; MiniLM (:func:`~superscopes_nn.science.chance.cosine_pairs`) when None.
    Memoised: the chance line and the α-choice null score the same texts against the same names."""
    if cosine is None:
        base = cosine_pairs(embedder)
    else:
        def base(texts, refs):
            flat = cosine([t for t in texts for _ in refs], [r for _ in texts for r in refs])
            return np.asarray(flat, dtype=float).reshape(len(texts), len(refs))
    seen: dict = {}

    def score(texts, refs):
        key = (tuple(texts), tuple(refs))
        if key not in seen:
            seen[key] = np.asarray(base(list(texts), list(refs)), dtype=float)
        return seen[key].copy()

    return score


def run_single_prompt(name: str, prompt: str, token: str, site: str, alphas: Sequence[float] | dict,
                      default_layers: Callable[[int], list[int]], argv=None, model=None, cosine=None,
                      embedder=None, description: str = "", target_layer: int | None = None) -> dict:
    """Run one (prompt, token) over layers x alphas, score, write CSV + grid PNG, print a summary.

    Chance (the grid is one prompt, so the null is other prompts' names,
    :func:`~superscopes_nn.science.superscopes.other_entity_names`): per cell ``chance_rate``, the share
    of other names its text passes (summed: the cells expected to pass by chance); per layer,
    :func:`~superscopes_nn.science.superscopes.choice_chance`, the α-detection rule's chosen cosine
    beside the best of the same texts against each other name (``{stem}_choice.csv``).

    ``alphas``: one list, or ``{name: list}`` (the first is the default; ``--alphas NAME`` picks).

    ``target_layer``: the official notebook's target layer for this example (None = the
    source layer); ``--target-layer`` overrides it (``-1`` = the source layer).

    ``--decoding``: ``greedy`` (default; a named deviation: the notebooks' ``model.generate``
    samples under Llama-2-chat's generation config) or ``llama2-chat``
    (:data:`~superscopes_nn.core.sampling.LLAMA2_CHAT`, per-row seed ``--seed``); a sampled run's
    files are ``<name>_<model>_<protocol>_llama2-chat-s<seed>...``, its run store separate.
    """
    p = parser(description or f"Superscopes {name}: {prompt!r}, token {token!r}, {site}",
               out=f"runs/superscopes_{name}", name=name,
               layers_help="e.g. 0-7, 0,2,4 or all (default: the paper's, scaled)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="official",
                   help="official: the vector replaces the target's hidden state at the last token (paper's code)")
    p.add_argument("--target-layer", type=int, default=-1 if target_layer is None else target_layer,
                   help="target layer (default: the notebook's; -1 = the source layer)")
    p.add_argument("--from-csv", default=None, help="re-score a saved CSV instead of running the sweep")
    lists = alphas if isinstance(alphas, dict) else {"default": alphas}
    p.add_argument("--alphas", choices=list(lists), default=next(iter(lists)), help="amplifier list")
    add_decoding(p)
    args = p.parse_args(argv)
    sampling = decoding_of(p, args)
    alphas = lists[args.alphas]
    tl = None if args.target_layer == -1 else args.target_layer
    out = Path(args.out)
    tag = Path(str(args.model or "gemma-3-270m")).name
    stem = f"{name}_{tag}_{args.protocol}{decoding_tag(args)}"
    if args.from_csv:
        df = read_saved_csv(args.from_csv)
        n = int(df.source_layer.max()) + 1
        layers = sorted(int(l) for l in df.source_layer.unique())
        t_run = float("nan")
    else:
        m, out = setup(args, model)
        n = model_info(m).n_layers
        layers = model_layers(args.layers, n, default_layers(n))
        t0 = time.perf_counter()
        df = superscope(m, prompt, sites=site, layers=layers, alphas=alphas, position=token, target_layer=tl,
                        protocol=args.protocol, options=run_options(args, out, stem, sampling=sampling))
        t_run = time.perf_counter() - t0
        save_csv(df, out / f"{stem}_raw.csv")  # unscored: re-score with --from-csv
    t0 = time.perf_counter()
    df = add_scores(df, embedder=embedder, cosine=cosine)
    scorer, others = pair_scorer(cosine, embedder), other_entity_names([prompt])
    df = with_chance(df, others, score_pairs=scorer)
    choice = choice_chance(df, others, score_pairs=scorer)
    t_score = time.perf_counter() - t0
    csv = save_csv(df, out / f"{stem}.csv")
    choice.to_csv(out / f"{stem}_choice.csv", index=False)
    png = grid_figure(df, out / f"{stem}.png",
                      f"{prompt!r} token {df.source_token.iat[0]!r}, {site}, protocol {args.protocol}, "
                      f"target layer {'= source' if tl is None else tl}, {tag} ({n} layers)")
    best = detect_alpha(df)
    agree = rule_agreement(df)
    log(f"{name}: {prompt!r} token {df.source_token.iat[0]!r} site {site} layers {layers} alphas "
        f"{[float(a) for a in alphas]}: {len(df)} rows, sweep {t_run:.1f} s, scoring {t_score:.1f} s")
    passed = int((df.score_source_cosine > SUCCESS_THRESHOLD).sum())
    log(f"  {passed} of {len(df)} cells have cosine > {SUCCESS_THRESHOLD:g} to the prompt; chance line "
        f"{df.chance_rate.sum():.1f} (the same texts against {len(others)} other entity names)")
    for r, c in zip(best.itertuples(index=False), choice.itertuples(index=False)):
        base = df[(df.source_layer == r.source_layer) & (df.alpha == 1.0)]
        b = f"α=1 {base.score_source_cosine.iat[0]:.2f} {base.interpretation.iat[0]!r}; " if len(base) else ""
        log(f"  layer {r.source_layer:2d}: {b}best α={r.alpha:g} cos {r.score:.2f} (best-of-{c.k} chance "
            f"{c.null_mean:.2f}, q95 {c.null_q95:.2f}, p {c.p_other:.2f}) {r.interpretation!r}")
    log(f"  detection rules agree (source_cosine vs stability) on {agree['agree']}/{agree['groups']} layers")
    log(f"wrote {csv} and {png}")
    return {"df": df, "best": best, "choice": choice, "csv": csv, "png": png, "layers": layers, "sweep_s": t_run,
            "score_s": t_score, "agreement": agree, "passed": passed, "chance_line": float(df.chance_rate.sum())}
