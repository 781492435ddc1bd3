"""``patched_logits``: a full pass per row vs the library default, one run.

    .venv/bin/python benchmarks/patched_logits.py [--model gemma-3-270m] [--rows 256] [--repeats 3]

Token-identity rows (residual of a sentence's positions, every layer, patched into
``IDENTITY_PROMPT`` at ``?``), as ``experiments/patchscopes/token_identity.py`` runs them.
``full``: every row runs the whole target prompt and the model computes vocabulary
logits at every position (``shared_prefix=False``, no logits window); ``default``: the
target prefix's KV cache is computed once per call and reused, and vocabulary logits
are computed only from the earliest patched position on.
One warm-up round, then ``--repeats`` interleaved rounds (``benchmarks/timing.py``).
Checks that the top-1 tokens agree; the last line is one JSON object (``speedup``: median of
per-round full / default ratios; ``median_s``, ``spread``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import Way, add_args, interleave, report, say, setup  # noqa: E402

import superscopes_nn.engine.chunks as E  # noqa: E402
import superscopes_nn.engine.rows as P  # noqa: E402
from superscopes_nn import IDENTITY_PROMPT, Source, Target, load_model, patched_logits, resolve  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--rows", type=int, default=256)
    add_args(p, repeats=3, warmup=1)
    args = p.parse_args()
    setup(args)
    model = load_model(args.model)
    n = model._module.config.num_hidden_layers
    sentence = "The quick brown fox jumps over the lazy dog near the river bank"
    n_tok = len(P.encode(model.tokenizer, sentence))
    patches = [(Source(sentence, layer, pos), Target(IDENTITY_PROMPT, layer=layer, placeholder="?"), None)
               for pos in range(1, n_tok) for layer in range(n)][: args.rows]
    rows = resolve(model, patches)
    top1: dict = {}

    def default():
        top1["default"] = patched_logits(model, rows).argmax(-1)

    def full():
        with mock.patch.object(E, "_supports_logits_to_keep", lambda m: False):  # logits at every position
            top1["full"] = patched_logits(model, rows, shared_prefix=False).argmax(-1)

    t = interleave([Way("default", default), Way("full", full)], repeats=args.repeats, warmup=args.warmup,
                   progress=say)
    rep = report(t, {"speedup": ("full", "default")})
    same = int((top1["default"] == top1["full"]).sum())
    md, sp = rep["median_s"], rep["spread"]
    print(f"{len(rows)} rows, target {len(rows[0].target_ids)} tokens, vocab {model._module.config.vocab_size}, "
          f"medians of {rep['repeats']} rounds")
    print(f"full logits   {md['full']:7.2f} s  {sp['full']}")
    print(f"default       {md['default']:7.2f} s  {sp['default']}  ({rep['ratios']['speedup']:.2f}x faster), "
          f"top-1 equal {same}/{len(rows)}")
    print(json.dumps({"model": args.model, "rows": len(rows), "full_s": md["full"], "default_s": md["default"],
                      "speedup": rep["ratios"]["speedup"], "top1_equal": same, **rep}))


if __name__ == "__main__":
    main()
