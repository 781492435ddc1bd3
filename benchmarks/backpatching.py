"""Back-patching sweep speed on SmolLM2-135M (CPU): per-pair loop vs batched sweep.

    .venv/bin/python benchmarks/backpatching.py [--model smollm2-135m] [--queries 2] [--loop-rows 40]

The full (s, t) sweep, s > t, over every layer (30 layers: 435 pairs per query),
last token of the two-hop prompt patched into the same prompt, 10 new tokens.
Measured in one run:

- loop:    one ``patchscope`` call per (query, s, t) row with ``max_batch_size=1``
           (one source trace + one ``generate`` per row, L(L-1)/2 calls per query);
           ``--loop-rows`` rows spread over the sweep are timed and scaled to all rows;
- batched: one ``patchscope`` call over every row (``max_batch_size`` rows per
           session; the source prompt traced once per chunk, the shared target
           prefix's KV cache reused).

The loop rows' token ids are compared with the batched rows (``loop_rows_differing``). The last line is
one JSON object; ``speedup`` = loop / batched.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from superscopes_nn import load_model  # noqa: E402
from superscopes_nn.architectures import num_layers  # noqa: E402
from superscopes_nn.api import patchscope  # noqa: E402

from experiments.backpatching import backpatch_patches, layer_pairs, load_queries  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=None, help="two-hop JSONL (default: superscopes_nn/data/two_hop.jsonl)")
    p.add_argument("--queries", type=int, default=2, help="two-hop queries (first N)")
    p.add_argument("--loop-rows", type=int, default=40, help="rows timed in the per-pair loop (scaled to all)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    model = load_model(args.model)
    qs = load_queries(args.data, args.queries)
    pairs = layer_pairs(num_layers(model._module.config))
    patches = backpatch_patches(qs, pairs)
    n = len(patches)
    kw = dict(max_new_tokens=args.max_new_tokens)
    patchscope(model, patches[:8], max_batch_size=8, **kw)  # warm-up

    t0 = time.perf_counter()
    batched = patchscope(model, patches, max_batch_size=args.batch_size, progress=True, **kw)
    t_batched = time.perf_counter() - t0

    step = max(1, n // max(1, min(args.loop_rows, n)))
    picked = list(range(0, n, step))[: args.loop_rows]
    mismatches = 0
    t0 = time.perf_counter()
    for i in picked:
        got = patchscope(model, [patches[i]], max_batch_size=1, **kw)
        mismatches += got.token_ids[0] != batched.token_ids[i]
    t_loop = (time.perf_counter() - t0) * n / len(picked)

    res = {
        "model": args.model, "queries": len(qs), "pairs_per_query": len(pairs), "rows": n,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "loop_s": round(t_loop, 2), "loop_rows_timed": len(picked), "batched_s": round(t_batched, 2),
        "rows_per_s": {"loop": round(n / t_loop, 2), "batched": round(n / t_batched, 2)},
        "speedup": round(t_loop / t_batched, 2), "loop_rows_differing": int(mismatches),
    }
    print(f"{n} rows ({len(qs)} queries x {len(pairs)} (s,t) pairs): per-pair loop {t_loop:.1f}s "
          f"(scaled from {len(picked)} rows, {n / t_loop:.2f} rows/s), batched {t_batched:.1f}s "
          f"({n / t_batched:.2f} rows/s); speedup {res['speedup']}x; "
          f"{mismatches}/{len(picked)} loop rows differ from the batched rows")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
