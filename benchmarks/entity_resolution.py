"""Entity-resolution experiment speed: one batched sweep vs one ``patchscope`` call per row.

    .venv/bin/python benchmarks/entity_resolution.py [--model smollm2-135m] [--entities 40] [--loop-rows 30]

Both sides run the same rows (entity name, last token, every layer, target layer =
source layer, ``ENTITY_PROMPT``, greedy ``--max-new-tokens``), generation only
(scoring is the same for both and timed apart when ``--score`` is given):

- batched: ``experiments.entity_resolution.entity_resolution`` (one sweep, chunks of 64 rows,
  shared target-prefix KV cache), baseline off;
- loop:    ``patchscope(model, [one row])`` per row on ``--loop-rows`` rows, scaled to all rows,
  whose token ids must equal the batched ones.

The last line is one JSON object with both times and ``speedup`` = loop / batched.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.entity_resolution import entity_resolution, entity_table  # noqa: E402
from superscopes_nn import ENTITY_PROMPT, Source, Target, load_model, patchscope  # noqa: E402
from superscopes_nn.architectures import num_layers  # noqa: E402


def main(argv=None, model=None, entities=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--entities", type=int, default=40)
    p.add_argument("--loop-rows", type=int, default=30, help="rows timed in the per-row loop (scaled to all)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--score", action="store_true", help="also time scoring (needs superscopes_nn.scoring)")
    args = p.parse_args(argv)
    model = model if model is not None else load_model(args.model)
    n_layers = num_layers(model._module.config)
    ents = entity_table(entities, limit=args.entities)
    kw = dict(max_new_tokens=args.max_new_tokens)
    entity_resolution(model, ents.head(2), layers=[0], metrics=(), baseline=False, **kw)  # warm-up

    t0 = time.perf_counter()
    df = entity_resolution(model, ents, metrics=(), baseline=False, **kw)
    t_batched = time.perf_counter() - t0
    n = len(df)

    step = max(1, n // max(1, args.loop_rows))
    sample = df.iloc[::step].head(args.loop_rows)
    t0 = time.perf_counter()
    for r in sample.itertuples(index=False):
        one = patchscope(model, [(Source(r.source_prompt, int(r.source_layer), -1), Target(ENTITY_PROMPT), None)],
                         **kw)
        assert list(one.token_ids[0]) == list(r.token_ids), f"loop row differs from the sweep: {r.source_prompt} " \
                                                            f"layer {r.source_layer}"
    t_loop_rows = time.perf_counter() - t0
    t_loop = t_loop_rows / len(sample) * n

    result = {
        "benchmark": "entity_resolution", "model": args.model, "entities": len(ents), "layers": n_layers,
        "rows": n, "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
        "batched_s": round(t_batched, 2), "loop_rows_timed": len(sample), "loop_s_timed": round(t_loop_rows, 2),
        "loop_s_scaled": round(t_loop, 2), "speedup": round(t_loop / t_batched, 2),
    }
    if args.score:
        from experiments.entity_resolution import score

        t0 = time.perf_counter()
        import experiments.entity_resolution as er

        df["answer"] = [er.description_of(t) for t in df.interpretation]
        df["entity"] = df.source_prompt
        score(df, ents)
        result["scoring_s"] = round(time.perf_counter() - t0, 2)
    print(f"batched: {n} rows in {t_batched:.1f}s ({n / t_batched:.1f} rows/s)")
    print(f"loop:    {len(sample)} rows in {t_loop_rows:.1f}s -> {t_loop:.1f}s scaled to {n} rows")
    print(f"speedup (loop / batched): {t_loop / t_batched:.1f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
