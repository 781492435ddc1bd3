"""How the shared-prefix speed-up moves with target length and row count (SmolLM2, CPU).

    .venv/bin/python benchmarks/prefix_scaling.py

For target prompts of about 20, 40, 80 and 160 tokens (180 rows each) and for 30,
180 and 720 rows (40-token target), times plain unpatched batched HF generation
of the same rows and the library's patched sweep with the prefix KV cache reused.
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep import plain_generate  # noqa: E402

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


def measure(model, target: str, n_rows: int) -> dict:
    n_layers = model._module.config.num_hidden_layers
    alphas = [1, 3, 6, 9, 12, 15]
    prompts = ["Alexander the Great", "Pink Floyd", "Back to the Future", "Star Wars"]
    rows = sweep_rows(model, prompts, layers=range(n_layers), sites=["mlp_out"], alphas=alphas,
                      target=Target(target))[:n_rows]
    t0 = time.perf_counter()
    run_rows(model, rows, max_new_tokens=10)
    t_prefix = time.perf_counter() - t0
    t_plain = plain_generate(model._module, [list(r.target_ids) for r in rows], 10, 64, model.tokenizer.pad_token_id)
    return {"target_tokens": len(rows[0].target_ids), "rows": len(rows), "plain_s": round(t_plain, 2),
            "prefix_s": round(t_prefix, 2), "ratio_prefix_vs_plain": round(t_prefix / t_plain, 3)}


def main():
    model = load_model("smollm2-135m")
    tok = model.tokenizer
    run_rows(model, sweep_rows(model, "Pink Floyd", layers=[0], alphas=[1]), max_new_tokens=2)  # warm-up
    out = []
    for n in (20, 40, 80, 160):
        out.append(measure(model, target_of_length(tok, n), 180))
        print(out[-1], flush=True)
    for rows in (30, 720):
        out.append(measure(model, target_of_length(tok, 40), rows))
        print(out[-1], flush=True)
    print(f"{'tokens':>7} {'rows':>5} {'plain s':>8} {'prefix s':>9} {'ratio':>6}")
    for r in sorted(out, key=lambda r: (r["rows"], r["target_tokens"])):
        print(f"{r['target_tokens']:>7} {r['rows']:>5} {r['plain_s']:>8} {r['prefix_s']:>9} {r['ratio_prefix_vs_plain']:>6}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
