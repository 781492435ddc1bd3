"""Figure 3 speed on SmolLM2-135M (CPU): Superscopes batched sweep vs the official per-combo loop.

    .venv/bin/python benchmarks/fig3.py [--model smollm2-135m] [--loop-prompts 2] [--limit 48]

The full Figure 3 grid: 48 prompts x source layers 1-7 x alpha {1,3,6,9,12,15}
= 2016 rows, site mlp_out, target layer = source layer, entity-description target
prompt, 10 new tokens, greedy. Measured in one run:

- sweep: ``superscope(...)`` (batched nnsight sessions, 64 rows each, shared target prefix);
- loop:  the official per-combo loop: one HF ``generate`` per (prompt, layer, alpha) with
         a forward hook writing alpha * v (``tests/hf_reference.py``), on the first
         ``--loop-prompts`` prompts, scaled to all prompts; its token ids are checked
         against the sweep's.

Scoring (MiniLM) is not timed: it is the same for both. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from hf_reference import hf_patch_generate  # noqa: E402

from superscopes_nn.datasets import load_fig3_prompts  # noqa: E402
from superscopes_nn import ENTITY_PROMPT, load_model  # noqa: E402
from superscopes_nn.superscopes import MLP_ALPHAS, superscope  # noqa: E402


def main(argv=None, model=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--loop-prompts", type=int, default=2, help="prompts timed in the loop (scaled to all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts (default all 48)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    prompts = [x[0] for x in load_fig3_prompts()][: args.limit]
    layers = list(range(1, 8))
    model = model or load_model(args.model)
    hf = model._module
    kw = dict(site="mlp_out", layers=layers, alphas=MLP_ALPHAS, token=-1, max_new_tokens=args.max_new_tokens,
              max_batch_size=args.batch_size, progress=False)
    superscope(model, prompts[:1], **{**kw, "layers": [1]})  # warm-up

    t0 = time.perf_counter()
    df = superscope(model, prompts, **kw)
    t_sweep = time.perf_counter() - t0
    n = len(df)

    sub = df[df.source_prompt.isin(prompts[: args.loop_prompts])]
    tgt = model.tokenizer(ENTITY_PROMPT)["input_ids"]
    ids = {pr: model.tokenizer(pr)["input_ids"] for pr in sub.source_prompt.unique()}
    t0 = time.perf_counter()
    for r in sub.itertuples(index=False):
        a = r.alpha
        got = hf_patch_generate(hf, hf, ids[r.source_prompt], r.source_position, r.source_layer, r.site, tgt,
                                r.target_position, r.target_layer, lambda v, a=a: v * a, args.max_new_tokens,
                                tgt_site=r.target_site)
        assert got == r.token_ids, f"loop and sweep disagree on {r.source_prompt!r} layer {r.source_layer} alpha {a}"
    t_loop_sub = time.perf_counter() - t0
    t_loop = t_loop_sub * n / len(sub)

    res = {
        "benchmark": "superscopes_fig3", "model": args.model, "prompts": len(prompts), "layers": layers,
        "alphas": list(MLP_ALPHAS), "rows": n, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "sweep_s": round(t_sweep, 2), "loop_s_scaled": round(t_loop, 2), "loop_rows_timed": len(sub),
        "loop_s_timed": round(t_loop_sub, 2), "speedup": round(t_loop / t_sweep, 2),
        "rows_per_s": {"sweep": round(n / t_sweep, 2), "loop": round(n / t_loop, 2)},
        "loop_token_ids_match": True,
    }
    print(f"Figure 3 grid, {n} rows on {args.model}: sweep {t_sweep:.1f} s ({n / t_sweep:.1f} rows/s); "
          f"official loop {t_loop:.1f} s scaled from {len(sub)} rows in {t_loop_sub:.1f} s "
          f"({n / t_loop:.2f} rows/s); speedup {res['speedup']}x; loop token ids == sweep token ids")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
