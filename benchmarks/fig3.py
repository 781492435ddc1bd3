"""Figure 3 speed on SmolLM2-135M (CPU): Superscopes batched sweep vs the official per-combo loop.

    .venv/bin/python benchmarks/fig3.py [--model smollm2-135m] [--loop-prompts 2] [--limit 48] [--repeats 3]

The full Figure 3 grid: 48 prompts x source layers 1-7 x alpha {1,3,6,9,12,15}
= 2016 rows, site mlp_out, target layer = source layer, entity-description target
prompt, 10 new tokens, greedy. One warm-up round, then ``--repeats`` interleaved rounds
(``benchmarks/timing.py``; ``--limit 8`` for a quicker run):

- sweep: ``superscope(...)`` (batched nnsight sessions, 64 rows each, shared target prefix);
- loop:  the official per-combo loop: one HF ``generate`` per (prompt, layer, alpha) with
         a forward hook writing alpha * v (``benchmarks/_reference.py``), on the first
         ``--loop-prompts`` prompts (a different ``1/repeats`` of those rows each round),
         scaled to all rows; its token ids are checked against the sweep's.

Scoring (MiniLM) is not timed: it is the same for both. The last line is one JSON object
(``speedup``: median of per-round loop / sweep ratios; ``median_s``, ``spread``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from superscopes_nn.testing.hook_reference import hf_patch_generate  # noqa: E402
from timing import Way, add_args, interleave, report, round_slices, say, setup  # noqa: E402

from superscopes_nn.data.datasets import load_fig3_prompts  # noqa: E402
from superscopes_nn import ENTITY_PROMPT, load_model  # noqa: E402
from superscopes_nn.science.superscopes import MLP_ALPHAS, superscope  # noqa: E402


def main(argv=None, model=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--loop-prompts", type=int, default=2, help="prompts timed in the loop (scaled to all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts (default all 48)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    add_args(p, repeats=3, warmup=1)
    args = p.parse_args(argv)
    setup(args)
    prompts = [x[0] for x in load_fig3_prompts()][: args.limit]
    layers = list(range(1, 8))
    model = model or load_model(args.model)
    hf = model._module
    kw = dict(sites="mlp_out", layers=layers, alphas=MLP_ALPHAS, position=-1, max_new_tokens=args.max_new_tokens,
              max_batch_size=args.batch_size, progress=False)
    tgt = model.tokenizer(ENTITY_PROMPT)["input_ids"]
    state: dict = {"checked": set()}

    def sweep():
        state["df"] = superscope(model, prompts, **kw)

    def loop(k):
        df = state["df"]
        if "pick" not in state:
            state["pick"] = round_slices(list(df.index[df.source_prompt.isin(prompts[: args.loop_prompts])]),
                                         args.repeats)
            state["ids"] = {pr: model.tokenizer(pr)["input_ids"] for pr in prompts[: args.loop_prompts]}
        for i in state["pick"][0](k):
            r = df.loc[i]
            a = r.alpha
            got = hf_patch_generate(hf, hf, state["ids"][r.source_prompt], r.source_position, r.source_layer, r.site,
                                    tgt, r.target_position, r.target_layer, lambda v, a=a: v * a,
                                    args.max_new_tokens, tgt_site=r.target_site)
            assert got == list(r.token_ids), \
                f"loop and sweep disagree on {r.source_prompt!r} layer {r.source_layer} alpha {a}"
            state["checked"].add(i)

    t = interleave([Way("sweep", sweep), Way("loop", loop)], repeats=args.repeats, warmup=args.warmup,
                   progress=say)
    n, per_round = len(state["df"]), state["pick"][1]
    t.times["loop"] = [s * n / per_round for s in t.times["loop"]]
    rep = report(t, {"speedup": ("loop", "sweep")})
    md = rep["median_s"]
    res = {
        "benchmark": "superscopes_fig3", "model": args.model, "prompts": len(prompts), "layers": layers,
        "alphas": list(MLP_ALPHAS), "rows": n, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "sweep_s": md["sweep"], "loop_s_scaled": md["loop"],
        "loop_rows_timed": len(state["checked"]), "loop_rows_per_round": per_round, "speedup": rep["ratios"]["speedup"],
        "rows_per_s": {"sweep": round(n / md["sweep"], 2), "loop": round(n / md["loop"], 2)},
        "loop_token_ids_match": True, **rep,
    }
    print(f"Figure 3 grid, {n} rows on {args.model}, medians of {rep['repeats']} rounds: sweep {md['sweep']:.1f} s "
          f"{rep['spread']['sweep']} ({n / md['sweep']:.1f} rows/s); official loop {md['loop']:.1f} s "
          f"{rep['spread']['loop']} scaled from {per_round} rows a round ({n / md['loop']:.2f} rows/s); "
          f"speedup {res['speedup']}x; loop token ids == sweep token ids")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
