"""Decode steps spent on rows that already ended: the Figure 3 grid on Gemma (CPU).

    .venv/bin/python benchmarks/eos_steps.py [--model gemma-3-270m] [--limit 48] [--repeats 5]

Runs the Figure 3 grid (``--limit`` prompts x ``mlp_out`` layers 1-7 x 6 alphas,
entity-description target, 10 new tokens, chunks of 64) with the library default and
counts, per chunk, the decode steps HF ``generate`` ran (it stops when *every* row of
the chunk has ended) and how many of the chunk's row-steps went to rows that had
already produced end-of-sequence. A row whose first EOS is new token ``e`` needs the
prompt pass and ``e`` decode steps; ``generate`` runs ``max(min(e, max_new - 1))``
over the chunk.

To turn wasted row-steps into seconds it times one decode step (a forward of one new
token per row over a cached prompt) at batch sizes 64, 48, 32, 16, 8 and 1
(interleaved, ``--repeats`` rounds, medians) and estimates what dropping finished rows
from the batch would save: ``sum_s t(active_s)`` instead of ``steps x t(64)`` per chunk.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from timing import Way, add_args, interleave, report, say, setup  # noqa: E402

from superscopes_nn.data.datasets import load_fig3_prompts  # noqa: E402
from superscopes_nn import ENTITY_PROMPT, load_model  # noqa: E402
from superscopes_nn.science.superscopes import MLP_ALPHAS, superscope  # noqa: E402

BATCHES = (64, 48, 32, 16, 8, 1)


def decode_step_fn(hf, prompt_ids: list[int], batch: int):
    """A callable timing one decode step of ``batch`` rows over a cached prompt."""
    x = torch.tensor([prompt_ids] * batch)
    with torch.no_grad():
        out = hf(x, use_cache=True)
    cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    n = x.shape[1]

    def step():
        with torch.no_grad():
            hf(nxt, past_key_values=cache, use_cache=True, cache_position=torch.tensor([n]))
        cache.crop(-1)  # back to the prompt, so every call is the same step
    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--limit", type=int, default=48, help="first N Figure 3 prompts (48 = the whole grid)")
    p.add_argument("--max-new-tokens", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    add_args(p, repeats=5, warmup=1)
    args = p.parse_args(argv)
    setup(args)
    model = load_model(args.model)
    hf = model._module
    prompts = [x[0] for x in load_fig3_prompts()][: args.limit]
    df = superscope(model, prompts, sites="mlp_out", layers=list(range(1, 8)), alphas=MLP_ALPHAS, position=-1,
                    max_new_tokens=args.max_new_tokens, max_batch_size=args.batch_size)
    m, bs = args.max_new_tokens, args.batch_size
    lens = np.array([len(t) for t in df.token_ids])  # trimmed at the first EOS; m = no EOS
    need = np.minimum(lens, m - 1)  # decode steps each row needs (the prompt pass gives new token 0)
    steps_run, wasted, active = [], 0, []
    for k in range(0, len(lens), bs):  # every target has the same length: chunks are consecutive rows
        c = need[k:k + bs]
        s = int(c.max())
        steps_run.append(s)
        wasted += int(len(c) * s - c.sum())
        active.append([int((c >= j).sum()) for j in range(1, s + 1)])
    total = sum(len(need[k:k + bs]) * s for k, s in zip(range(0, len(lens), bs), steps_run))

    prompt = model.tokenizer(ENTITY_PROMPT)["input_ids"]
    prompt = prompt + prompt[-3:]  # about the mid-generation context length
    ways = [Way(f"b{b}", decode_step_fn(hf, prompt, b)) for b in BATCHES]
    t = interleave(ways, repeats=args.repeats, warmup=args.warmup, progress=say)
    step_s = {b: t.median(f"b{b}") for b in BATCHES}
    xs = np.array(sorted(BATCHES), dtype=float)
    ys = np.array([step_s[int(b)] for b in xs])
    cost = lambda a: float(np.interp(a, xs, ys))  # noqa: E731
    now = sum(len(need[k:k + bs]) and cost(len(need[k:k + bs])) * s
              for k, s in zip(range(0, len(lens), bs), steps_run))
    compact = sum(cost(a) for act in active for a in act if a > 0)
    res = {
        "benchmark": "eos_steps", "model": args.model, "rows": int(len(lens)), "chunks": len(steps_run),
        "max_new_tokens": m, "batch_size": bs,
        "rows_with_eos": int((lens < m).sum()), "eos_rate": round(float((lens < m).mean()), 4),
        "mean_new_tokens": round(float(lens.mean()), 2),
        "decode_steps_run_per_chunk": steps_run,
        "decode_row_steps": int(total), "wasted_row_steps": int(wasted),
        "wasted_fraction": round(wasted / max(1, total), 4),
        "decode_step_s": {str(b): round(v, 4) for b, v in step_s.items()},
        "decode_s_now_est": round(now, 2), "decode_s_compacted_est": round(compact, 2),
        "est_saving_s": round(now - compact, 2), "est_saving_fraction_of_decode": round((now - compact) / now, 4),
        "timing": report(t),
    }
    say(f"{res['rows']} rows: EOS in {res['rows_with_eos']} ({res['eos_rate']:.1%}); "
        f"{wasted}/{total} decode row-steps on finished rows ({res['wasted_fraction']:.1%}); "
        f"decode ~{now:.1f} s now vs ~{compact:.1f} s if finished rows left the batch")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
