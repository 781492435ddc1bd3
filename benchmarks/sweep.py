"""Full-sweep speed on SmolLM2-135M (CPU): naive loop vs batched sweep vs the unpatched limit.

    .venv/bin/python benchmarks/sweep.py [--model smollm2-135m] [--loop-rows 180]

All layers x alpha in {1,3,6,9,12,15}, 10 new tokens, entity-description target
prompt, target layer = source layer, site mlp_out. Measured in one run:

- loop:   the official per-combo loop: one HF ``generate`` per row with a forward hook
          (``--loop-rows`` rows, scaled to the full sweep);
- sweep:  ``superscopes_nn`` batched sweep (nnsight, one session per 64 rows) with
          ``shared_prefix=False``: every row recomputes the whole target prompt;
- prefix: the library default, ``shared_prefix=True``: the target prefix's KV cache is
          computed once per chunk and reused;
- plain:  unpatched batched HF ``generate`` of the same target rows (the limit).

The last line is one JSON object: ``speedup_vs_loop`` = loop / library default (prefix),
``speedup_vs_loop_no_prefix``, ``ratio_vs_plain`` = sweep without prefix reuse / plain
(the patching overhead), ``ratio_prefix_vs_plain`` = prefix / plain.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hf_reference import hf_patch_generate  # noqa: E402

from superscopes_nn import ENTITY_PROMPT, Target, load_model, run_rows, sweep_rows  # noqa: E402


def plain_generate(hf, ids: list[list[int]], max_new_tokens: int, batch: int, pad_id: int) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for k in range(0, len(ids), batch):
            x = torch.tensor(ids[k:k + batch])
            hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                        pad_token_id=pad_id, top_p=None, top_k=None, temperature=None)
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--loop-rows", type=int, default=180, help="rows timed in the naive loop (scaled to all)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    model = load_model(args.model)
    hf = model._module
    n_layers = hf.config.num_hidden_layers
    rows = sweep_rows(model, "Alexander the Great", token="Great", layers=range(n_layers), sites=["mlp_out"],
                      alphas=[1, 3, 6, 9, 12, 15], target=Target(ENTITY_PROMPT))
    n = len(rows)
    kw = dict(max_new_tokens=args.max_new_tokens, max_batch_size=args.batch_size)
    run_rows(model, rows[: args.batch_size], **kw)  # warm-up (allocator, kernels)

    t0 = time.perf_counter()
    df = run_rows(model, rows, shared_prefix=False, **kw)
    t_sweep = time.perf_counter() - t0

    t0 = time.perf_counter()
    dfp = run_rows(model, rows, shared_prefix=True, **kw)
    t_prefix = time.perf_counter() - t0
    assert dfp.token_ids.tolist() == df.token_ids.tolist(), "shared-prefix sweep differs from the plain sweep"

    t_plain = plain_generate(hf, [list(r.target_ids) for r in rows], args.max_new_tokens, args.batch_size,
                             model.tokenizer.pad_token_id)

    loop_rows = rows[: max(1, min(args.loop_rows, n))]
    t0 = time.perf_counter()
    for r, want in zip(loop_rows, df.token_ids):
        got = hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                list(r.target_ids), r.target_position, r.target_layer, r.mapping, args.max_new_tokens)
        assert got == want, "loop and batched sweep disagree"
    t_loop = (time.perf_counter() - t0) * n / len(loop_rows)

    res = {
        "model": args.model, "rows": n, "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "loop_s": round(t_loop, 2), "loop_rows_timed": len(loop_rows), "sweep_s": round(t_sweep, 2),
        "plain_s": round(t_plain, 2),
        "rows_per_s": {"loop": round(n / t_loop, 2), "sweep": round(n / t_sweep, 2), "plain": round(n / t_plain, 2)},
        "prefix_s": round(t_prefix, 2),
        "speedup_vs_loop": round(t_loop / t_prefix, 2), "speedup_vs_loop_no_prefix": round(t_loop / t_sweep, 2),
        "ratio_vs_plain": round(t_sweep / t_plain, 3), "ratio_prefix_vs_plain": round(t_prefix / t_plain, 3),
    }
    res["rows_per_s"]["prefix"] = round(n / t_prefix, 2)
    print(f"{n} rows: loop {t_loop:.1f}s ({n / t_loop:.2f} rows/s), sweep {t_sweep:.1f}s ({n / t_sweep:.2f} rows/s), "
          f"prefix {t_prefix:.1f}s ({n / t_prefix:.2f} rows/s), plain {t_plain:.1f}s ({n / t_plain:.2f} rows/s)")
    print(f"speedup vs loop: {res['speedup_vs_loop']}x (default, prefix reuse), "
          f"{res['speedup_vs_loop_no_prefix']}x (no prefix reuse); sweep/plain {res['ratio_vs_plain']}; "
          f"prefix/plain {res['ratio_prefix_vs_plain']}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
