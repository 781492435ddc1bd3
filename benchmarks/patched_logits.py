"""``patched_logits``: a full pass per row vs the library default, one run.

    .venv/bin/python benchmarks/patched_logits.py [--model gemma-3-270m] [--rows 256]

Token-identity rows (residual of a sentence's positions, every layer, patched into
``IDENTITY_PROMPT`` at ``?``), as ``experiments/token_identity.py`` runs them.
``full``: every row runs the whole target prompt and the model computes vocabulary
logits at every position (``shared_prefix=False``, no logits window); ``default``: the
target prefix's KV cache is computed once per call and reused, and vocabulary logits
are computed only from the earliest patched position on.
Checks that the top-1 tokens agree; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import superscopes_nn.resolver as P
from superscopes_nn import IDENTITY_PROMPT, Source, Target, load_model, patched_logits, resolve


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--rows", type=int, default=256)
    args = p.parse_args()
    model = load_model(args.model)
    n = model._module.config.num_hidden_layers
    sentence = "The quick brown fox jumps over the lazy dog near the river bank"
    n_tok = len(P.encode(model.tokenizer, sentence))
    patches = [(Source(sentence, layer, pos), Target(IDENTITY_PROMPT, layer=layer, placeholder="?"), None)
               for pos in range(1, n_tok) for layer in range(n)][: args.rows]
    rows = resolve(model, patches)
    patched_logits(model, rows[:8])  # warm-up
    t0 = time.perf_counter()
    window = patched_logits(model, rows).argmax(-1)
    t_window = time.perf_counter() - t0
    with mock.patch.object(P, "_logits_window", lambda m, n, positions: ({}, positions)):
        t0 = time.perf_counter()
        full = patched_logits(model, rows, shared_prefix=False).argmax(-1)
        t_full = time.perf_counter() - t0
    same = int((window == full).sum())
    print(f"{len(rows)} rows, target {len(rows[0].target_ids)} tokens, vocab {model._module.config.vocab_size}")
    print(f"full logits   {t_full:7.2f} s")
    print(f"default       {t_window:7.2f} s   ({t_full / t_window:.2f}x faster), top-1 equal {same}/{len(rows)}")
    print(json.dumps({"model": args.model, "rows": len(rows), "full_s": round(t_full, 2),
                      "default_s": round(t_window, 2), "speedup": round(t_full / t_window, 2),
                      "top1_equal": same}))


if __name__ == "__main__":
    main()
