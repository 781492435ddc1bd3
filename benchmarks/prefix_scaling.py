"""How the shared-prefix speed-up moves with target length and row count (SmolLM2, CPU).

    .venv/bin/python benchmarks/prefix_scaling.py [--repeats 3] [--threads 1]

For target prompts of about 20, 40, 80 and 160 tokens (180 rows each) and for 30,
180 and 720 rows (40-token target), times plain unpatched batched HF generation
of the same rows and the library's patched sweep with the prefix KV cache reused,
interleaved (one warm-up round, then ``--repeats`` rounds; ``benchmarks/timing.py``).
Prints a table of medians (ratios: median of per-round ratios) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep import plain_generate  # noqa: E402
from timing import Way, add_args, interleave, report, say, setup  # noqa: E402

from superscopes_nn import Target, load_model, run_rows, sweep_rows  # noqa: E402

PAIRS = [
    "Syria: Country in the Middle East", "Leonardo DiCaprio: American actor",
    "Samsung: South Korean multinational major appliance and consumer electronics corporation",
    "Paris: Capital city of France", "The Beatles: English rock band from Liverpool",
    "Toyota: Japanese car manufacturer", "Mount Everest: Highest mountain on Earth",
    "Albert Einstein: German-born theoretical physicist", "Amazon River: Largest river in South America",
    "Nike: American sportswear company", "Mozart: Austrian composer of the Classical period",
    "Tokyo: Capital city of Japan", "Harry Potter: Fantasy book series by J. K. Rowling",
    "Picasso: Spanish painter and sculptor", "Nile: Longest river in Africa",
    "Google: American technology company", "Shakespeare: English playwright and poet",
    "Brazil: Largest country in South America", "Coca-Cola: American soft drink company",
    "Moon: Natural satellite of the Earth", "Beethoven: German composer and pianist",
    "Sahara: Largest hot desert in the world", "Microsoft: American software company",
    "Rome: Capital city of Italy", "Napoleon: French emperor and military leader",
]


def target_of_length(tok, n_tokens: int) -> str:
    parts = []
    for p in sorted(PAIRS, key=len) * 4:  # short pairs first, so lengths land near the goal
        parts.append(p)
        if len(tok(", ".join(parts) + ", x")["input_ids"]) >= n_tokens:
            break
    return ", ".join(parts) + ", x"


def measure(model, target: str, n_rows: int, args) -> dict:
    n_layers = model._module.config.num_hidden_layers
    alphas = [1, 3, 6, 9, 12, 15]
    prompts = ["Alexander the Great", "Pink Floyd", "Back to the Future", "Star Wars"]
    rows = sweep_rows(model, prompts, layers=range(n_layers), sites=["mlp_out"], alphas=alphas,
                      target=Target(target))[:n_rows]
    targets = [list(r.target_ids) for r in rows]
    ways = [Way("prefix", lambda: run_rows(model, rows, max_new_tokens=10)),
            Way("plain", lambda: plain_generate(model._module, targets, 10, 64, model.tokenizer.pad_token_id))]
    t = interleave(ways, repeats=args.repeats, warmup=args.warmup, progress=say)
    rep = report(t, {"ratio_prefix_vs_plain": ("prefix", "plain")})
    return {"target_tokens": len(rows[0].target_ids), "rows": len(rows), "plain_s": rep["median_s"]["plain"],
            "prefix_s": rep["median_s"]["prefix"], "ratio_prefix_vs_plain": rep["ratios"]["ratio_prefix_vs_plain"],
            "spread": rep["spread"], "loadavg_after": rep["loadavg_after"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(p, repeats=3, warmup=1)
    args = p.parse_args(argv)
    setup(args)
    model = load_model("smollm2-135m")
    tok = model.tokenizer
    out = []
    for n in (20, 40, 80, 160):
        out.append(measure(model, target_of_length(tok, n), 180, args))
        print(out[-1], flush=True)
    for rows in (30, 720):
        out.append(measure(model, target_of_length(tok, 40), rows, args))
        print(out[-1], flush=True)
    print(f"{'tokens':>7} {'rows':>5} {'plain s':>8} {'prefix s':>9} {'ratio':>6}   (medians of {args.repeats} rounds)")
    for r in sorted(out, key=lambda r: (r["rows"], r["target_tokens"])):
        print(f"{r['target_tokens']:>7} {r['rows']:>5} {r['plain_s']:>8} {r['prefix_s']:>9} {r['ratio_prefix_vs_plain']:>6}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
