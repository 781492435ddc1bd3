"""Superscopes Figure 3: MLP-output interpretation successes per layer, Patchscopes vs Superscopes.

    python -m experiments.superscopes_fig3 --model gemma-3-270m [--limit N] [--layers 1-7|all] [--out DIR]

The 48 prompts of ``../shared/data/superscopes_fig3_prompts.tsv``; the inspected token
is the last token of each prompt *as this model tokenizes it* (token = -1); site
``mlp_out``; source layers 1-7 (or ``all``); target layer = source layer; alphas
1, 3, 6, 9, 12, 15; 10 new tokens into the entity-description prompt.

Success = MiniLM cosine > 0.3 between the source prompt and the interpretation.
Patchscopes = success at alpha 1; Superscopes = success at any alpha in 3..15.
Writes ``fig3_<model>.csv`` (every row), ``fig3_<model>.png`` (grouped bars),
``fig3_<model>_summary.json``, and prints the per-layer counts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from experiments.run_args import store_kwargs
from experiments.superscopes_common import (
    bars_figure, base_parser, get_model, load_fig3_prompts, log, n_layers_of, parse_layers, read_saved_csv,
    save_csv, score,
)
from superscopes_nn.superscopes import MLP_ALPHAS, SUCCESS_THRESHOLD, rule_agreement, success_table, superscope


def main(argv=None, model=None, cosine=None, embedder=None) -> dict:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--prompts", default=None, help="prompt TSV (default ../shared/data/superscopes_fig3_prompts.tsv)")
    p.add_argument("--threshold", type=float, default=SUCCESS_THRESHOLD)
    p.add_argument("--from-csv", default=None,
                   help="re-score a saved fig3 CSV (raw or scored) instead of running the sweep")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    items = load_fig3_prompts(args.prompts)[: args.limit]
    prompts = [x[0] for x in items]
    paper_tok = dict(items)
    out = Path(args.out)
    tag = Path(str(args.model)).name
    if args.from_csv:
        df = read_saved_csv(args.from_csv)
        df = df[df.source_prompt.isin(prompts)].reset_index(drop=True)
        n = int(json.loads(Path(args.from_csv).with_suffix(".meta.json").read_text())["n_layers"]) \
            if Path(args.from_csv).with_suffix(".meta.json").exists() else int(df.source_layer.max()) + 1
        layers = sorted(int(l) for l in df.source_layer.unique())
        t_run = float("nan")
    else:
        m = get_model(args.model, model)
        n = n_layers_of(m)
        layers = parse_layers(args.layers, n, [l for l in range(1, 8) if l < n])
        t0 = time.perf_counter()
        df = superscope(m, prompts, site="mlp_out", layers=layers, alphas=MLP_ALPHAS, token=-1, target_layer=None,
                        max_new_tokens=args.max_new_tokens, max_batch_size=args.batch_size, progress=args.progress,
                        **store_kwargs(args, out, f"fig3_{tag}"))
        t_run = time.perf_counter() - t0
        save_csv(df, out / f"fig3_{tag}_raw.csv")  # unscored, so scoring can be redone with --from-csv
        (out / f"fig3_{tag}_raw.meta.json").write_text(json.dumps({"n_layers": n, "sweep_s": round(t_run, 1)}))
    t0 = time.perf_counter()
    df = score(df, cosine=cosine, embedder=embedder)
    t_score = time.perf_counter() - t0
    df["paper_last_token"] = [paper_tok.get(pr, "") for pr in df.source_prompt]
    table = success_table(df, threshold=args.threshold)
    agree = rule_agreement(df)
    tok = df.drop_duplicates("source_prompt")
    same_tok = int(sum(s.strip() == t.strip() for s, t in zip(tok.source_token, tok.paper_last_token)))
    csv = save_csv(df, out / f"fig3_{tag}.csv")
    png = bars_figure(table, out / f"fig3_{tag}.png",
                      f"MLP-output interpretations, {tag} ({n} layers), cosine > {args.threshold:g}", len(prompts))
    summary = {
        "model": tag, "n_layers": n, "prompts": len(prompts), "layers": layers, "rows": len(df),
        "sweep_s": round(t_run, 1), "score_s": round(t_score, 1), "threshold": args.threshold,
        "per_layer": table.to_dict(orient="records"),
        "total_patchscopes": int(table.patchscopes.sum()), "total_superscopes": int(table.superscopes.sum()),
        "rule_agreement_source_vs_stability": agree,
        "last_token_same_as_paper": same_tok,
        "error_rows": int(df["error"].notna().sum()) if "error" in df else 0,
    }
    (out / f"fig3_{tag}_summary.json").write_text(json.dumps(summary, indent=1))
    log(f"fig3 on {tag}: {len(prompts)} prompts x {len(layers)} layers x {len(MLP_ALPHAS)} alphas = {len(df)} rows; "
        f"sweep {t_run:.1f} s, scoring {t_score:.1f} s")
    log(f"successes (cosine > {args.threshold:g}) of {len(prompts)} prompts per layer:")
    log(table.to_string(index=False))
    log(f"total: Patchscopes {summary['total_patchscopes']}, Superscopes {summary['total_superscopes']}")
    log(f"alpha chosen by the paper's rule (source cosine) = alpha chosen by stability in "
        f"{agree['agree']}/{agree['groups']} (prompt, layer) groups ({agree['rate']:.0%})")
    log(f"last token equals the paper's Llama-2 last token for {same_tok}/{len(prompts)} prompts")
    log(f"wrote {csv}, {png}")
    return {"df": df, "table": table, "csv": csv, "png": png, "summary": summary}


if __name__ == "__main__":
    main()
