"""Full-sweep speed on SmolLM2-135M (CPU): the library against its true limits, in one run.

    .venv/bin/python benchmarks/sweep.py [--model smollm2-135m] [--loop-rows 60] [--repeats 5] [--threads 1]

All layers x alpha in {1,3,6,9,12,15} of "Alexander the Great" (180 rows on SmolLM2),
10 new tokens, entity-description target prompt, target layer = source layer, site
``mlp_out``, chunks of 64 rows. One warm-up round, then ``--repeats`` interleaved
rounds (``benchmarks/timing.py``), each timing every way once:

- ``library``:           ``run_rows`` default (``shared_prefix=True``: the target prefix's
                         KV cache computed once per chunk and reused);
- ``library_no_prefix``: ``run_rows(shared_prefix=False)``: every row runs its whole target;
- ``plain``:             unpatched batched HF ``generate`` of the same target rows;
- ``plain_prefix``:      unpatched batched HF ``generate`` with the same prefix reuse (the
                         prefix's KV cache computed once per chunk, expanded to the chunk,
                         the rest generated): the true limit of the default path;
- ``loop``:              the official per-row loop (one HF ``generate`` per row with a forward
                         hook, ``benchmarks/_reference.py``): ``--loop-rows`` rows spread over
                         the sweep, a different ``1/repeats`` of them each round, scaled to all
                         rows; every loop row's token ids must equal the library's (asserted);
- ``matmul``:            this CPU's matmul throughput at the decode shapes (every linear layer
                         and the LM head at M = batch rows): the compute bound of a round is
                         the default path's forward FLOPs over that round's GFLOP/s.

Ratios are medians of per-round ratios. Memory: the library default on 180 and 720 rows,
each in a fresh child process: its peak RSS, and (because the model load's peak can mask
the run's) its RSS after loading and the peak sampled during ``run_rows``
(``--memory-only`` runs just this).
The last line is one JSON object: ``speedup_vs_loop`` (loop / library), ``ratio_vs_plain_prefix``
(library / plain_prefix), ``ratio_vs_plain``, ``ratio_vs_compute_bound``, ``spread``
(each way's [min, max] seconds), ``median_s``, ``memory`` and ``goals``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from superscopes_nn.testing.hook_reference import hf_patch_generate  # noqa: E402
from timing import RssSampler, Way, add_args, interleave, report, run_child, say, setup  # noqa: E402

from superscopes_nn import ENTITY_PROMPT, Target, load_model, run_rows, sweep_rows  # noqa: E402
from superscopes_nn.engine.chunks import chunk_indices, shared_prefix_len  # noqa: E402

ALPHAS = [1, 3, 6, 9, 12, 15]
MEMORY_PROMPTS = ["Alexander the Great", "Pink Floyd", "Back to the Future", "Star Wars"]


def _gen(hf, x, max_new_tokens, pad_id, **kw):
    return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                       pad_token_id=pad_id, top_p=None, top_k=None, temperature=None, **kw)


def plain_generate(hf, ids: list[list[int]], max_new_tokens: int, batch: int, pad_id: int) -> list:
    """Unpatched batched greedy generation, ``batch`` rows per call; returns the new token ids."""
    out = []
    with torch.no_grad():
        for idx in chunk_indices([len(i) for i in ids], batch):
            x = torch.tensor([ids[i] for i in idx])
            out += _gen(hf, x, max_new_tokens, pad_id)[:, x.shape[1]:].tolist()
    return out


def plain_prefix_generate(hf, ids: list[list[int]], prefix_len: int, max_new_tokens: int, batch: int,
                          pad_id: int) -> list:
    """:func:`plain_generate` with prefix reuse: per chunk, the first ``prefix_len`` tokens run once
    (batch 1, logits of the last position only), their KV cache is repeated to the chunk's rows,
    and ``generate`` runs the rest (the library default's work, minus the patch)."""
    out = []
    with torch.no_grad():
        for idx in chunk_indices([len(i) for i in ids], batch):
            x = torch.tensor([ids[i] for i in idx])
            kw = {}
            if prefix_len:
                cache = hf(x[:1, :prefix_len], use_cache=True, logits_to_keep=1).past_key_values
                cache.batch_repeat_interleave(len(x))
                kw["past_key_values"] = cache
            out += _gen(hf, x, max_new_tokens, pad_id, **kw)[:, x.shape[1]:].tolist()
    return out


# ------------------------------------------------------------------ compute bound


def linear_shapes(hf) -> list[tuple[int, int]]:
    """(in, out) of every linear layer one token passes through, the LM head included."""
    shapes = [(m.in_features, m.out_features) for name, m in hf.named_modules()
              if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")]
    head = hf.get_output_embeddings()
    return shapes + [(head.in_features, head.out_features)]


def forward_flops(hf, rows, prefix_len: int, max_new_tokens: int, batch: int) -> dict:
    """Forward FLOPs of the default path's minimal work for ``rows`` (2 per multiply-add).

    Per chunk: the prefix once (no LM head but its last position); per row the rest of
    the target (LM head at its last position) and ``max_new_tokens - 1`` decode steps
    (LM head each); attention scores and values ``4 * q_dim * context`` per token per layer.
    ``full``: the same without prefix reuse (every row runs its whole target).
    """
    cfg = hf.config
    head = hf.get_output_embeddings()
    body = 2 * sum(i * o for i, o in linear_shapes(hf)[:-1])
    lm = 2 * head.in_features * head.out_features
    q_dim = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    attn = lambda ctx: 4 * q_dim * ctx * cfg.num_hidden_layers  # noqa: E731

    def tokens(start, stop):  # positions [start, stop): body + attention
        return sum(body + attn(c + 1) for c in range(start, stop))

    total = full = 0
    for idx in chunk_indices([len(r.target_ids) for r in rows], batch):
        t = len(rows[idx[0]].target_ids)
        decode = sum(body + attn(t + s + 1) + lm for s in range(max_new_tokens - 1))
        total += tokens(0, prefix_len) + lm + len(idx) * (tokens(prefix_len, t) + lm + decode)
        full += len(idx) * (tokens(0, t) + lm + decode)
    return {"default": total, "full": full}


def matmul_way(hf, m_rows: int, target_s: float = 0.5):
    """(fn, flops): ``fn`` runs every linear shape of one decode step at M = ``m_rows``, enough
    times to take about ``target_s`` seconds; ``flops`` is what one call computes."""
    shapes = linear_shapes(hf)
    dtype = hf.dtype
    xs = {i: torch.randn(m_rows, i, dtype=dtype) for i, _ in shapes}
    ws = {(i, o): torch.randn(i, o, dtype=dtype) for i, o in set(shapes)}
    once = 2 * m_rows * sum(i * o for i, o in shapes)

    def one():
        for i, o in shapes:
            torch.matmul(xs[i], ws[(i, o)])

    import time

    t0 = time.perf_counter()
    one()
    reps = max(1, int(target_s / max(1e-6, time.perf_counter() - t0)))

    def fn():
        for _ in range(reps):
            one()
    return fn, once * reps


# ------------------------------------------------------------------ memory


def memory_child(args) -> None:
    """``--memory-child N``: load the model, run the library default on N rows, print one JSON line
    (RSS after loading, sampled peak RSS during the run), exit."""
    import gc

    setup(args)
    model = load_model(args.model)
    rows = sweep_rows(model, MEMORY_PROMPTS, position=-1, layers=range(model._module.config.num_hidden_layers),
                      sites=["mlp_out"], alphas=ALPHAS, target=Target(ENTITY_PROMPT))[: args.memory_child]
    assert len(rows) == args.memory_child, f"only {len(rows)} memory rows"
    gc.collect()
    with RssSampler() as s:
        run_rows(model, rows, max_new_tokens=args.max_new_tokens, max_batch_size=args.batch_size)
    print(json.dumps({"after_load_mb": s.start_mb, "run_peak_mb": s.peak_mb}))


def measure_memory(args, sizes=(180, 720)) -> dict:
    """Per row count, in a fresh process each: ``peak_rss_mb`` (the process's ``ru_maxrss``, which
    the model load's conversion peak can mask), ``after_load_mb`` and ``run_peak_mb`` (sampled
    during ``run_rows``) and ``run_growth_mb`` = run peak - after load."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--threads", str(args.threads),
           "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size), "--memory-child"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = {}
    for n in sizes:
        peak, text = run_child(cmd + [str(n)], env=env)
        m = json.loads(text.strip().splitlines()[-1])
        out[str(n)] = {"peak_rss_mb": peak, **m, "run_growth_mb": round(m["run_peak_mb"] - m["after_load_mb"], 1)}
        say(f"library default on {n} rows (fresh process): {out[str(n)]}")
    return out


def memory_flat(memory: dict) -> bool:
    """Flat in rows: 4x the rows adds at most 10% to the peak and at most 64 MiB to the run's growth."""
    a, b = memory["180"], memory["720"]
    return b["peak_rss_mb"] <= 1.10 * a["peak_rss_mb"] and b["run_growth_mb"] - a["run_growth_mb"] <= 64


# ------------------------------------------------------------------ main


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--loop-rows", type=int, default=60, help="rows timed in the per-row loop over all rounds")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rows", type=int, default=None, help="only the first N rows (a quick check; goals need all)")
    p.add_argument("--no-memory", action="store_true", help="skip the child-process peak-RSS runs")
    p.add_argument("--memory-only", action="store_true", help="only the child-process memory runs")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    add_args(p, repeats=5, warmup=1)
    args = p.parse_args(argv)
    if args.memory_child is not None:
        return memory_child(args)
    if args.memory_only:
        res = {"benchmark": "sweep_memory", "model": args.model, "memory": measure_memory(args)}
        res["memory_flat"] = memory_flat(res["memory"])
        print(json.dumps(res))
        return res
    setup(args)
    model = load_model(args.model)
    hf = model._module
    pad = model.tokenizer.pad_token_id
    rows = sweep_rows(model, "Alexander the Great", position="Great", layers=range(hf.config.num_hidden_layers),
                      sites=["mlp_out"], alphas=ALPHAS, target=Target(ENTITY_PROMPT))[: args.rows]
    n, m, bs = len(rows), args.max_new_tokens, args.batch_size
    kw = dict(max_new_tokens=m, max_batch_size=bs)
    targets = [list(r.target_ids) for r in rows]
    prefix = min(shared_prefix_len([rows[i] for i in idx]) for idx in chunk_indices([len(t) for t in targets], bs))

    per_round = max(1, math.ceil(args.loop_rows / args.repeats))
    step = max(1, n // (per_round * args.repeats))
    loop_idx = list(range(0, n, step))[: per_round * args.repeats]
    per_round = len(loop_idx) // args.repeats
    ref: dict = {}

    def library(k):
        df = run_rows(model, rows, shared_prefix=True, **kw)
        ids = [list(t) for t in df.token_ids]
        ref.setdefault("library", ids)
        assert ids == ref["library"], "library default changed between rounds"
        return ids

    def library_no_prefix(k):
        ids = [list(t) for t in run_rows(model, rows, shared_prefix=False, **kw).token_ids]
        assert ids == ref["library"], "shared_prefix=False differs from the library default"

    def plain(k):
        ref.setdefault("plain", plain_generate(hf, targets, m, bs, pad))

    def plain_prefix(k):
        got = plain_prefix_generate(hf, targets, prefix, m, bs, pad)
        if "plain" in ref:
            assert got == ref["plain"], "plain generate with prefix reuse differs from plain generate"

    def loop(k):
        picked = loop_idx[:2] if k < 0 else loop_idx[k::args.repeats][:per_round]
        for i in picked:
            r = rows[i]
            got = hf_patch_generate(hf, hf, list(r.source_ids), r.source_position, r.source_layer, r.site,
                                    targets[i], r.target_position, r.target_layer, r.mapping, m)
            assert got == ref["library"][i], f"loop and library disagree on row {i}"
        return len(picked)

    mm_fn, mm_flops = matmul_way(hf, bs)
    ways = [Way("library", library), Way("library_no_prefix", library_no_prefix), Way("plain", plain),
            Way("plain_prefix", plain_prefix), Way("loop", loop, scale=n / per_round), Way("matmul", mm_fn)]
    t = interleave(ways, repeats=args.repeats, warmup=args.warmup, progress=say)

    flops = forward_flops(hf, rows, prefix, m, bs)
    gflops = [mm_flops / s / 1e9 for s in t.times["matmul"]]
    t.times["compute_bound"] = [flops["default"] / (g * 1e9) for g in gflops]
    t.times["compute_bound_no_prefix"] = [flops["full"] / (g * 1e9) for g in gflops]
    ratios = {
        "speedup_vs_loop": ("loop", "library"), "speedup_vs_loop_no_prefix": ("loop", "library_no_prefix"),
        "ratio_vs_plain_prefix": ("library", "plain_prefix"), "ratio_vs_plain": ("library", "plain"),
        "ratio_no_prefix_vs_plain": ("library_no_prefix", "plain"),
        "ratio_vs_compute_bound": ("library", "compute_bound"),
        "ratio_plain_prefix_vs_compute_bound": ("plain_prefix", "compute_bound"),
    }
    rep = report(t, ratios)
    memory = None if args.no_memory else measure_memory(args)
    res = {
        "benchmark": "sweep", "model": args.model, "rows": n, "max_new_tokens": m, "batch_size": bs,
        "prefix_tokens": prefix, "target_tokens": len(targets[0]),
        "loop_rows_timed": len(loop_idx), "loop_rows_per_round": per_round,
        **{k: rep["ratios"][k] for k in ratios}, "spread": rep["spread"], "median_s": rep["median_s"],
        "ratio_spread": rep["ratio_spread"],
        "rows_per_s": {w: round(n / s, 2) for w, s in rep["median_s"].items() if w != "matmul"},
        "matmul_gflops": {"median": round(sorted(gflops)[len(gflops) // 2], 2), "min": round(min(gflops), 2),
                          "max": round(max(gflops), 2), "shape_m": bs},
        "forward_gflop": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "memory": memory,
        "repeats": rep["repeats"], "warmup": args.warmup, "threads": rep["threads"], "cpu_count": rep["cpu_count"],
        "loadavg_before": rep["loadavg_before"], "loadavg_after": rep["loadavg_after"],
        "peak_rss_mb": rep["peak_rss_mb"], "loop_token_ids_equal": True,
    }
    res["goals"] = {
        "ratio_vs_plain_prefix<=1.05": res["ratio_vs_plain_prefix"] <= 1.05,
        "speedup_vs_loop>=30": res["speedup_vs_loop"] >= 30,
        "loop_rows_timed>=60": len(loop_idx) >= 60,
    }
    if memory:
        res["goals"]["memory_flat"] = memory_flat(memory)
    md = rep["median_s"]
    say(f"{n} rows, medians of {rep['repeats']} interleaved rounds (spread = min-max):")
    for w in ("library", "library_no_prefix", "plain", "plain_prefix", "loop", "compute_bound"):
        lo, hi = rep["spread"][w]
        say(f"  {w:<18} {md[w]:8.2f} s  [{lo:.2f}-{hi:.2f}]")
    say(f"library / plain_prefix {res['ratio_vs_plain_prefix']}, library / plain {res['ratio_vs_plain']}, "
        f"library / compute bound {res['ratio_vs_compute_bound']} ({res['matmul_gflops']['median']} GFLOP/s), "
        f"loop / library {res['speedup_vs_loop']}x; load {rep['loadavg_before']} -> {rep['loadavg_after']}")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
