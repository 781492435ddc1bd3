"""The cost of ``exact=True`` (one row per session, no prefix reuse) against the default, in bf16 (CPU).

    .venv/bin/python benchmarks/exact_mode.py [--models gemma-3-270m smollm2-135m] [--rows 48] [--repeats 5]

Per model (loaded in bfloat16): ``--rows`` rows spread over every layer x alpha in
{1,3,6,9,12,15} of "Alexander the Great" (last token, entity-description target,
``mlp_out``, 10 new tokens). One warm-up round, then ``--repeats`` interleaved rounds:

- ``default``: ``run_rows`` on all rows (chunks of 64, the target prefix's KV cache reused);
- ``exact``:   ``run_rows(exact=True)``. Its work is one session per row, so its time is
  linear in rows: each round runs a different ``1/repeats`` of the rows (all rows once
  over the run) and is scaled to all rows.

``ratio_exact_vs_default`` is the median of per-round ratios. ``rows_ids_differ``
counts rows whose exact token ids differ from the batched default (bf16 batching is
only within the stated logit tolerance; exact reproduces a one-at-a-time run). The last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from timing import Way, add_args, interleave, report, say, setup  # noqa: E402

from superscopes_nn import ENTITY_PROMPT, Target, load_model, run_rows, sweep_rows  # noqa: E402

ALPHAS = [1, 3, 6, 9, 12, 15]


def measure(name: str, args) -> dict:
    model = load_model(name, dtype=torch.bfloat16)
    n_layers = model._module.config.num_hidden_layers
    every = sweep_rows(model, "Alexander the Great", position=-1, layers=range(n_layers), sites=["mlp_out"],
                       alphas=ALPHAS, target=Target(ENTITY_PROMPT))
    step = max(1, len(every) // args.rows)
    rows = every[::step][: args.rows]
    n, kw = len(rows), dict(max_new_tokens=args.max_new_tokens)
    per_round = math.ceil(n / args.repeats)
    got: dict = {"exact": {}}

    def default():
        got["default"] = [list(t) for t in run_rows(model, rows, **kw).token_ids]

    def exact(k):
        idx = [0] if k < 0 else list(range(k, n, args.repeats))
        df = run_rows(model, [rows[i] for i in idx], exact=True, **kw)
        got["exact"].update({i: list(t) for i, t in zip(idx, df.token_ids)})
        return len(idx)

    # the exact slices differ in size by at most one row: scale each by its own count
    ways = [Way("default", default), Way("exact", exact)]
    sizes = [len(range(k, n, args.repeats)) for k in range(args.repeats)]
    t = interleave(ways, repeats=args.repeats, warmup=args.warmup, progress=lambda s: say(f"{name}: {s}"))
    t.times["exact"] = [s * n / c for s, c in zip(t.times["exact"], sizes)]
    rep = report(t, {"ratio_exact_vs_default": ("exact", "default")})
    differ = sum(got["exact"][i] != got["default"][i] for i in range(n))
    out = {
        "model": name, "dtype": "bfloat16", "rows": n, "max_new_tokens": args.max_new_tokens,
        "ratio_exact_vs_default": rep["ratios"]["ratio_exact_vs_default"],
        "ratio_spread": rep["ratio_spread"]["ratio_exact_vs_default"],
        "median_s": rep["median_s"], "spread": rep["spread"],
        "rows_per_s": {w: round(n / s, 2) for w, s in rep["median_s"].items()},
        "exact_rows_per_round": per_round, "rows_ids_differ": int(differ),
        "loadavg_before": rep["loadavg_before"], "loadavg_after": rep["loadavg_after"],
    }
    say(f"{name} bf16, {n} rows: default {rep['median_s']['default']:.2f} s {rep['spread']['default']}, "
        f"exact {rep['median_s']['exact']:.2f} s {rep['spread']['exact']} (scaled); "
        f"exact / default {out['ratio_exact_vs_default']}x; {differ} rows' ids differ")
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["gemma-3-270m", "smollm2-135m"])
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=10)
    add_args(p, repeats=5, warmup=1)
    args = p.parse_args(argv)
    setup(args)
    per_model = [measure(m, args) for m in args.models]
    res = {"benchmark": "exact_mode", "repeats": args.repeats, "threads": torch.get_num_threads(),
           "ratio_exact_vs_default": {m["model"]: m["ratio_exact_vs_default"] for m in per_model},
           "models": per_model}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
