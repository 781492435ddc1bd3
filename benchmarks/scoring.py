"""Scoring throughput (rows/s) of each metric in ``superscopes_nn.science.scoring`` on synthetic sweep rows.

    .venv/bin/python benchmarks/scoring.py [--rows 10000] [--keys 200] [--unique-texts 3000] [--repeats 3]

The rows look like a sweep's output: ``--keys`` source prompts, each with its
reference description, repeated over layers/alphas, and interpretations drawn
(with repeats) from a pool of ``--unique-texts`` generated phrases. Timed:

- alias:          ``alias_match`` of every row against its reference + 2 aliases;
- rouge_l:        ``rouge_l`` over all rows;
- cosine:         ``embedding_cosine`` (each unique text encoded once);
- cosine_nodedup: the same embedder encoding all 2 x rows texts, for comparison.

The embedder loads before timing; then one warm-up round and ``--repeats`` interleaved
rounds (``benchmarks/timing.py``). Seconds are medians; ``dedup_speedup`` is the median of
per-round cosine_nodedup / cosine ratios. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import Way, add_args, interleave, report, say, setup  # noqa: E402

from superscopes_nn.science.scoring import alias_match, embedding_cosine, load_embedder, rouge_l  # noqa: E402

WORDS = (
    "band rock English London album king ancient Macedon empire film director actor American city river "
    "country capital company founded music song singer famous war president general ship ocean novel author"
).split()


def synthetic_rows(n_rows: int, n_keys: int, n_unique: int, seed: int = 0):
    """(interpretations, references, aliases): lists of length n_rows; aliases is a list of 2-alias lists."""
    rng = random.Random(seed)
    phrase = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    refs = [phrase(rng.randint(4, 10)) for _ in range(n_keys)]
    alias_pool = [[phrase(2), phrase(1)] for _ in range(n_keys)]
    pool = [phrase(rng.randint(3, 16)) for _ in range(n_unique)]
    keys = [i % n_keys for i in range(n_rows)]
    return [rng.choice(pool) for _ in range(n_rows)], [refs[k] for k in keys], [alias_pool[k] for k in keys]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def cosine_nodedup(embedder, a, b, batch_size=256):
    ea = embedder.encode(a, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    eb = embedder.encode(b, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.einsum("ij,ij->i", ea.astype(np.float64), eb.astype(np.float64))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--keys", type=int, default=200, help="distinct source prompts / references")
    p.add_argument("--unique-texts", type=int, default=3000, help="distinct interpretations")
    p.add_argument("--skip-nodedup", action="store_true")
    add_args(p, repeats=3, warmup=1, threads=0)
    args = p.parse_args(argv)
    setup(args)

    texts, refs, aliases = synthetic_rows(args.rows, args.keys, args.unique_texts)
    n_unique = len(set(texts) | set(refs))
    embedder, load_s = timed(load_embedder)
    got: dict = {}
    ways = [Way("alias", lambda: [alias_match(t, [r, *al]) for t, r, al in zip(texts, refs, aliases)]),
            Way("rouge_l", lambda: rouge_l(texts, refs)),
            Way("cosine", lambda: got.__setitem__("dedup", embedding_cosine(texts, refs, embedder)))]
    if not args.skip_nodedup:
        ways.append(Way("cosine_nodedup", lambda: got.__setitem__("full", cosine_nodedup(embedder, texts, refs))))
    t = interleave(ways, repeats=args.repeats, warmup=args.warmup, progress=say)
    if "full" in got:
        assert np.allclose(got["dedup"], got["full"], atol=1e-4), "dedup and no-dedup cosines differ"
    rep = report(t, {"dedup_speedup": ("cosine_nodedup", "cosine")} if "full" in got else {})
    seconds = rep["median_s"]

    print(f"{args.rows} rows, {n_unique} unique texts, embedder load {load_s:.1f}s, medians of {rep['repeats']} rounds")
    print(f"{'metric':<16}{'seconds':>10}{'rows/s':>12}  spread")
    for name, s in seconds.items():
        print(f"{name:<16}{s:>10.2f}{args.rows / s:>12.0f}  {rep['spread'][name]}")
    result = {
        "rows": args.rows,
        "unique_texts": n_unique,
        "embedder_load_s": round(load_s, 2),
        "seconds": seconds,
        "rows_per_s": {k: round(args.rows / v, 1) for k, v in seconds.items()},
        **rep,
    }
    if "full" in got:
        result["dedup_speedup"] = rep["ratios"]["dedup_speedup"]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
