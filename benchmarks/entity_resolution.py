"""Entity-resolution experiment speed: one batched sweep vs one ``patchscope`` call per row.

    .venv/bin/python benchmarks/entity_resolution.py [--model smollm2-135m] [--entities 40] [--loop-rows 30] [--repeats 3]

Both sides run the same rows (entity name, last token, every layer, target layer =
source layer, ``ENTITY_PROMPT``, greedy ``--max-new-tokens``), generation only
(scoring is the same for both and timed apart when ``--score`` is given), one warm-up round
then ``--repeats`` interleaved rounds (``benchmarks/timing.py``):

- batched: ``experiments.patchscopes.entity_resolution.entity_resolution`` (one sweep, chunks of 64 rows,
  shared target-prefix KV cache), baseline off;
- loop:    ``patchscope(model, [one row])`` per row on ``--loop-rows`` rows (a different
  ``1/repeats`` of them each round), scaled to all rows, whose token ids must equal the batched ones.

The last line is one JSON object with both medians, ``spread`` and ``speedup`` = loop / batched
(median of per-round ratios).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import Way, add_args, interleave, report, round_slices, say, setup  # noqa: E402

from experiments.patchscopes.entity_resolution import entity_resolution, entity_table  # noqa: E402
from superscopes_nn import ENTITY_PROMPT, Source, Target, load_model, patchscope  # noqa: E402
from superscopes_nn.structure.architectures import num_layers  # noqa: E402


def main(argv=None, model=None, entities=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--entities", type=int, default=40)
    p.add_argument("--loop-rows", type=int, default=30, help="rows timed in the per-row loop (scaled to all)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--score", action="store_true", help="also time scoring (needs superscopes_nn.science.scoring)")
    add_args(p, repeats=3, warmup=1)
    args = p.parse_args(argv)
    setup(args)
    model = model if model is not None else load_model(args.model)
    n_layers = num_layers(model._module.config)
    ents = entity_table(entities, limit=args.entities)
    kw = dict(max_new_tokens=args.max_new_tokens)
    state: dict = {}

    def batched():
        state["df"] = entity_resolution(model, ents, metrics=(), baseline=False, **kw)

    def loop(k):
        df = state["df"]
        if "pick" not in state:
            step = max(1, len(df) // max(1, args.loop_rows))
            state["pick"] = round_slices(list(range(0, len(df), step))[: args.loop_rows], args.repeats)
        for i in state["pick"][0](k):
            r = df.iloc[i]
            one = patchscope(model, [(Source(r.source_prompt, int(r.source_layer), -1), Target(ENTITY_PROMPT),
                                      None)], **kw)
            assert list(one.token_ids[0]) == list(r.token_ids), f"loop row differs from the sweep: " \
                                                                f"{r.source_prompt} layer {r.source_layer}"
            state.setdefault("checked", set()).add(i)

    ways = [Way("batched", batched), Way("loop", loop)]
    t = interleave(ways, repeats=args.repeats, warmup=args.warmup, progress=say)
    df = state["df"]
    n, per_round = len(df), state["pick"][1]
    t.times["loop"] = [s * n / per_round for s in t.times["loop"]]  # a round times per_round of the n rows
    rep = report(t, {"speedup": ("loop", "batched")})
    md = rep["median_s"]
    result = {
        "benchmark": "entity_resolution", "model": args.model, "entities": len(ents), "layers": n_layers,
        "rows": n, "max_new_tokens": args.max_new_tokens,
        "batched_s": md["batched"], "loop_rows_timed": len(state["checked"]),
        "loop_rows_per_round": per_round, "loop_s_scaled": md["loop"], "speedup": rep["ratios"]["speedup"], **rep,
    }
    if args.score:
        from experiments.patchscopes.entity_resolution import score

        t0 = time.perf_counter()
        import experiments.patchscopes.entity_resolution as er

        df["answer"] = [er.description_of(t) for t in df.interpretation]
        df["entity"] = df.source_prompt
        score(df, ents)
        result["scoring_s"] = round(time.perf_counter() - t0, 2)
    print(f"batched: {n} rows, median {md['batched']:.1f}s {rep['spread']['batched']} ({n / md['batched']:.1f} rows/s)")
    print(f"loop:    {per_round} rows a round -> median {md['loop']:.1f}s {rep['spread']['loop']} scaled to {n} rows")
    print(f"speedup (loop / batched, median of {rep['repeats']} rounds): {result['speedup']}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
