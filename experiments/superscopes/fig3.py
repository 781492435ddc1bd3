"""Superscopes Figure 3: MLP-output interpretation successes per layer, Patchscopes vs Superscopes,
each beside its chance level.

    python -m experiments.superscopes.fig3 [--protocol official|same-site] [--control random]
           [--model gemma-3-270m] [--limit N] [--layers 1-7|all] [--out DIR] [--resume]
           [--decoding greedy|llama2-chat] [--seed S]
    python -m experiments.superscopes.fig3 --from-csv RAW.csv.gz [--random-csv RANDOM_RAW.csv.gz]

Protocol (default ``official``) against the paper's code, GalNivs/Superscopes,
``code/superscopes_mlp_outputs_full_evaluation.ipynb``:

======================  ==========================================================  ==========================================
step                    official code (function)                                    here
======================  ==========================================================  ==========================================
prompts                 ``test_pairs``: 48 names                                    same 48 (``superscopes_fig3_prompts.tsv``)
source token            ``find_last_token`` then ``find_token_id``: first token     same rule on Gemma's tokens
                        whose string equals the last token's                        (:func:`~superscopes_nn.science.superscopes.last_token_position`);
                                                                                    ``--token last`` = position -1
source vector           ``generate_and_extract_intermediate_values``:               ``mlp_out`` = what the MLP block adds to
                        ``layer.mlp`` forward-hook output (Llama: no post-norm)     the residual (Gemma: after its post-FFN norm)
layers                  ``range(1, 8)``                                             1-7 (``--layers``)
amplifiers              α = 1 (``..._patchscopes_reference``) and                   1, 3, 6, 9, 12, 15
                        ``range(3, 18, 3)`` (``..._patch_to_same_layer``)
target prompt           ``patchscope_interpret``: "Syria: Country in the Middle     ``ENTITY_PROMPT`` (same text)
                        East, ... corporation, x"
target site             ``set_hs_patch_hooks(..., module="hs")``: the vector        ``--protocol official``: Target(site="residual",
                        REPLACES the layer output (hidden state)                    position=-1); ``same-site``: it replaces the
                                                                                    target's ``mlp_out`` at the placeholder
target position/layer   ``target_idx = -1``; ``target_layer=layer``                 last token; target layer = source layer
decoding                ``generate(max_length=seq_len + 10)`` with Llama-2-chat's   10 new tokens; ``--decoding greedy``
                        generation config (which samples: temperature 0.6,          (default, named deviation: the paper's
                        top-p 0.9)                                                  texts were likely sampled) or
                                                                                    ``llama2-chat``: those settings
                                                                                    (:data:`~superscopes_nn.core.sampling.LLAMA2_CHAT`),
                                                                                    per-row seeded (``--seed``), local only
score / success         MiniLM mean-pooled cosine(source prompt, text) > 0.3;       :func:`~superscopes_nn.science.superscopes.add_scores`
                        per (prompt, layer): α = 1 (Patchscopes), any α in 3..15    ``score_source_cosine``; ``success_table``
chance                  none                                                        shuffled-source null (exact over all
                                                                                    derangements) and, with ``--control random``,
                                                                                    norm-matched random vectors
                                                                                    (:mod:`superscopes_nn.science.chance`)
======================  ==========================================================  ==========================================

Writes, under ``--out``: ``fig3_<model>_<protocol>_raw.csv.gz`` (sampled:
``fig3_<model>_<protocol>_llama2-chat-s<seed>_raw.csv.gz``, its own run store) (every row, unscored; the
random-vector rows in ``..._random_raw.csv.gz``), ``..._scored.csv.gz``, ``..._chance.csv``
(raw / null / above-null / random rates with bootstrap 95% intervals over prompts, per layer
and in all, per arm and per α), ``..._detect.csv`` (the α rule's chosen cosine beside its
best-of-5 null and, with ``--control random``, the rule's pick among the random-vector texts),
``..._summary.json`` and ``..._bars.png``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from experiments.common import (
    add_decoding, check_args, decoding_config, decoding_of, decoding_tag, first_paragraph, log, model_layers,
    parser, pyplot, read_saved_csv, rows_dir, save_csv, save_figure, setup,
)
from experiments.superscopes.fig3_rows import FIG3_LAYERS, fig3_rows
from superscopes_nn.science.chance import chance_table, cosine_pairs, format_chance
from superscopes_nn.data.datasets import load_fig3_prompts

from superscopes_nn.engine.run import run_rows
from superscopes_nn.core.options import options_from_args
from superscopes_nn.core.store import load_run
from superscopes_nn.science.superscopes import MLP_ALPHAS, PROTOCOLS, SUCCESS_THRESHOLD, add_scores, success_table
from superscopes_nn.structure.info import model_info, model_name  # noqa: E402

ARMS = {"patchscopes": (1.0,), "superscopes": (3.0, 6.0, 9.0, 12.0, 15.0)}


def load_rows(path) -> pd.DataFrame:
    """A raw CSV written by this script, or a run directory (``..._rows``)."""
    path = Path(path)
    return load_run(path)[0] if path.is_dir() else read_saved_csv(path)


def run_store(args, out: Path, stem: str, control: str, layers) -> dict:
    """Run directory ``OUT/<stem><settings>_<control>_rows`` (:func:`~experiments.common.rows_dir`) and the
    config that defines its rows."""
    config = {"experiment": "fig3", "protocol": args.protocol, "control": control, "token": args.token,
              "layers": list(layers), "alphas": list(MLP_ALPHAS), "seed": 0, **decoding_config(args)}
    return {"run_dir": rows_dir(out, stem, args, control), "resume": bool(args.resume), "config": config}


def fig3_chance(df: pd.DataFrame, random_df: pd.DataFrame | None = None, threshold: float = SUCCESS_THRESHOLD,
                embedder=None, score_pairs=None, n_boot: int = 2000, n_derangements: int | None = None) -> pd.DataFrame:
    """The chance table of a Figure 3 frame: arms Patchscopes (α=1) and Superscopes (α 3..15),
    and one arm per α; per source layer and over all layers."""
    return chance_table(df, score_pairs or cosine_pairs(embedder), threshold=threshold, by=("source_layer",),
                        arms=ARMS, per_choice=True, random_df=random_df, n_boot=n_boot, n_derangements=n_derangements)


def detection_chance(df: pd.DataFrame, embedder=None, score_pairs=None, n_boot: int = 2000,
                     random_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Automatic α detection against chance: the mean cosine of the text the paper's rule picks
    (best of α 3..15 against the source prompt) beside the best of the same texts against another
    prompt (exact over derangements) and, with ``random_df``, the rule's pick among the
    norm-matched random-vector texts against the source prompt; per layer and in all,
    bootstrap intervals over prompts."""
    return chance_table(df, score_pairs or cosine_pairs(embedder), threshold=None, by=("source_layer",),
                        arms={"detect": ARMS["superscopes"]}, per_choice=False, n_boot=n_boot, random_df=random_df)


def bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Successes per layer, Patchscopes vs Superscopes, each with its shuffled-source chance level."""
    plt = pyplot()
    import numpy as np

    t = table[table.source_layer != "all"]
    p, s = t[t.arm == "patchscopes"], t[t.arm == "superscopes"]
    x = np.arange(len(p))
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(p) + 2), 3.8))
    for off, arm, colour, label in ((-0.2, p, "#8c8c8c", "Patchscopes (α=1)"), (0.2, s, "#d62728", "Superscopes (α∈3..15)")):
        ax.bar(x + off, arm.raw_count, 0.4, label=label, color=colour)
        ax.errorbar(x + off, arm.raw_count, yerr=[arm.raw_count - arm.raw_lo * arm.n, arm.raw_hi * arm.n - arm.raw_count],
                    fmt="none", ecolor="black", lw=0.8, capsize=2)
        ax.scatter(x + off, arm.null_count, marker="_", s=250, color="black", zorder=3)
    ax.scatter([], [], marker="_", color="black", label="shuffled-source chance")
    ax.set_xticks(x, [str(l) for l in p.source_layer])
    ax.set_xlabel("layer (MLP output)")
    ax.set_ylabel(f"successes (of {int(p.n.iloc[0])} prompts)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=130)


def main(argv=None, model=None, cosine=None, embedder=None, score_pairs=None) -> dict:
    p = parser(first_paragraph(__doc__), out="runs/superscopes_fig3", name="fig3",
               layers_help="e.g. 1-7 (the paper's, default) or all", limit_help="only the first N prompts",
               runtime="about 38 min on 2 shared CPU cores (Gemma 3 270M: 48 prompts x 7 layers x 6 α = 2016 rows)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="official",
                   help="official: the vector replaces the target's hidden state (paper's code); "
                        "same-site: it replaces the target's MLP output at the placeholder")
    p.add_argument("--token", choices=("official", "last"), default="official",
                   help="official: first occurrence of the last token's string (the notebook's rule); last: -1")
    p.add_argument("--control", choices=("none", "random"), default="none",
                   help="random: also run norm-matched random vectors (doubles the generation)")
    p.add_argument("--prompts", default=None, help="prompt TSV (default: the shared superscopes_fig3_prompts.tsv)")
    p.add_argument("--threshold", type=float, default=SUCCESS_THRESHOLD)
    p.add_argument("--from-csv", default=None, help="score a saved raw CSV (or run directory) instead of sweeping")
    p.add_argument("--random-csv", default=None, help="with --from-csv: the random-vector rows")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    add_decoding(p)
    args = check_args(p, p.parse_args(argv))
    sampling = decoding_of(p, args)
    prompts = [x[0] for x in load_fig3_prompts(args.prompts)][: args.limit]
    out = Path(args.out)
    tag = Path(str(args.model or "gemma-3-270m")).name
    stem = f"fig3_{tag}_{args.protocol}{decoding_tag(args)}"
    random_df = None
    if args.from_csv:
        df = load_rows(args.from_csv)
        df = df[df.source_prompt.isin(prompts)].reset_index(drop=True)
        if args.random_csv:
            random_df = load_rows(args.random_csv)
            random_df = random_df[random_df.source_prompt.isin(prompts)].reset_index(drop=True)
        layers, t_run = sorted(int(l) for l in df.source_layer.unique()), float("nan")
    else:
        m, out = setup(args, model)
        tag = Path(str(args.model)).name if args.model else Path(model_name(m)).name
        stem = f"fig3_{tag}_{args.protocol}{decoding_tag(args)}"
        n = model_info(m).n_layers
        layers = model_layers(args.layers, n, [l for l in FIG3_LAYERS if l < n])
        opts = options_from_args(args, sampling=sampling)
        t0 = time.perf_counter()
        frames = {}
        for control in ("source", "random") if args.control == "random" else ("source",):
            rows = fig3_rows(m, prompts, protocol=args.protocol, control=control, layers=layers, alphas=MLP_ALPHAS,
                             token=args.token)
            frames[control] = run_rows(m, rows, opts.replace(**run_store(args, out, stem, control, layers)))
        df, random_df = frames["source"], frames.get("random")
        save_csv(df, out / f"{stem}_raw.csv.gz")
        if random_df is not None:
            save_csv(random_df, out / f"{stem}_random_raw.csv.gz")
        t_run = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = add_scores(df, embedder=embedder, cosine=cosine)
    table = fig3_chance(df, random_df, args.threshold, embedder, score_pairs, n_boot=args.boot)
    detect = detection_chance(df, embedder, score_pairs, n_boot=args.boot, random_df=random_df)
    t_score = time.perf_counter() - t0
    counts = success_table(df, threshold=args.threshold)
    save_csv(df, out / f"{stem}_scored.csv.gz")
    if random_df is not None:  # the random-vector texts' cosines, so the random columns recount without MiniLM
        save_csv(add_scores(random_df, embedder=embedder, cosine=cosine), out / f"{stem}_random_scored.csv.gz")
    table.to_csv(out / f"{stem}_chance.csv", index=False)
    detect.to_csv(out / f"{stem}_detect.csv", index=False)
    png = bars(table, out / f"{stem}_bars.png", f"Fig 3, {tag}, protocol {args.protocol}: cosine > {args.threshold:g}"
                                                f" ({len(prompts)} prompts)")
    allrow = table[table.source_layer == "all"].set_index("arm")
    summary = {"model": tag, "protocol": args.protocol, "token": getattr(args, "token", "official"),
               "decoding": args.decoding, "sampling": None if sampling is None else sampling.key,
               "prompts": len(prompts), "layers": layers, "rows": len(df), "random_rows": 0 if random_df is None else len(random_df),
               "sweep_s": round(t_run, 1), "score_s": round(t_score, 1), "threshold": args.threshold,
               "per_layer": counts.to_dict(orient="records"),
               "all": allrow.reset_index().to_dict(orient="records"),
               "detect": detect[detect.source_layer == "all"].to_dict(orient="records"),
               "error_rows": int(df["error"].notna().sum()) if "error" in df else 0}
    (out / f"{stem}_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    log(f"fig3 {tag}, protocol {args.protocol}: {len(prompts)} prompts x {len(layers)} layers x {len(MLP_ALPHAS)} α "
        f"= {len(df)} rows; sweep {t_run:.1f} s, scoring {t_score:.1f} s")
    shown = format_chance(table)
    cols = ["arm", "source_layer", "n", "raw", "null", "above"] + (["random", "above_random"] if random_df is not None else [])
    log(shown[cols].to_string(index=False))
    log(f"wrote {out / (stem + '_chance.csv')}, {png}")
    return {"df": df, "table": counts, "chance": table, "detect": detect, "png": png, "summary": summary, "random_df": random_df}


if __name__ == "__main__":
    main()
