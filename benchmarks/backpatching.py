"""Back-patching sweep speed on SmolLM2-135M (CPU): per-pair loop vs batched sweep.

    .venv/bin/python benchmarks/backpatching.py [--model smollm2-135m] [--queries 2] [--loop-rows 40] [--repeats 3]

The full (s, t) sweep, s > t, over every layer (30 layers: 435 pairs per query),
last token of the two-hop prompt patched into the same prompt, 10 new tokens.
One warm-up round, then ``--repeats`` interleaved rounds (``benchmarks/timing.py``):

- loop:    one ``patchscope`` call per (query, s, t) row with ``max_batch_size=1``
           (one source trace + one ``generate`` per row, L(L-1)/2 calls per query);
           ``--loop-rows`` rows spread over the sweep, a different ``1/repeats`` of them
           each round, scaled to all rows;
- batched: one ``patchscope`` call over every row (``max_batch_size`` rows per
           session; the source prompt traced once per chunk, the shared target
           prefix's KV cache reused).

The loop rows' token ids are compared with the batched rows (``loop_rows_differing``). The last line is
one JSON object; ``speedup`` = loop / batched (median of per-round ratios), ``median_s``, ``spread``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import Way, add_args, interleave, report, round_slices, say, setup  # noqa: E402

from superscopes_nn import load_model  # noqa: E402
from superscopes_nn.structure.architectures import num_layers  # noqa: E402
from superscopes_nn.engine.api import patchscope  # noqa: E402

from experiments.hopping_too_late.backpatching import backpatch_patches, layer_pairs, load_queries  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=None, help="two-hop JSONL (default: superscopes_nn/data/two_hop.jsonl)")
    p.add_argument("--queries", type=int, default=2, help="two-hop queries (first N)")
    p.add_argument("--loop-rows", type=int, default=40, help="rows timed in the per-pair loop (scaled to all)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    add_args(p, repeats=3, warmup=1)
    args = p.parse_args(argv)
    setup(args)
    warnings.simplefilter("ignore")
    model = load_model(args.model)
    qs = load_queries(args.data, args.queries)
    pairs = layer_pairs(num_layers(model._module.config))
    patches = backpatch_patches(qs, pairs)
    n = len(patches)
    kw = dict(max_new_tokens=args.max_new_tokens)
    step = max(1, n // max(1, min(args.loop_rows, n)))
    pick, per_round = round_slices(list(range(0, n, step))[: args.loop_rows], args.repeats)
    state = {"differ": {}}

    def batched():
        state["ids"] = list(patchscope(model, patches, max_batch_size=args.batch_size, **kw).token_ids)

    def loop(k):
        for i in pick(k):
            got = patchscope(model, [patches[i]], max_batch_size=1, **kw)
            state["differ"][i] = got.token_ids[0] != state["ids"][i]

    t = interleave([Way("batched", batched), Way("loop", loop, scale=n / per_round)], repeats=args.repeats,
                   warmup=args.warmup, progress=say)
    rep = report(t, {"speedup": ("loop", "batched")})
    mismatches, timed = sum(state["differ"].values()), len(state["differ"])
    md = rep["median_s"]
    res = {
        "model": args.model, "queries": len(qs), "pairs_per_query": len(pairs), "rows": n,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "loop_s": md["loop"], "loop_rows_timed": timed, "batched_s": md["batched"],
        "rows_per_s": {"loop": round(n / md["loop"], 2), "batched": round(n / md["batched"], 2)},
        "speedup": rep["ratios"]["speedup"], "loop_rows_differing": int(mismatches), **rep,
    }
    print(f"{n} rows ({len(qs)} queries x {len(pairs)} (s,t) pairs), medians of {rep['repeats']} rounds: per-pair "
          f"loop {md['loop']:.1f}s {rep['spread']['loop']} (scaled from {per_round} rows a round), batched "
          f"{md['batched']:.1f}s {rep['spread']['batched']}; speedup {res['speedup']}x; "
          f"{mismatches}/{timed} loop rows differ from the batched rows")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
