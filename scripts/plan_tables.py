"""The table of docs/ndif.md "What a paper figure costs on NDIF": every registered script's recorded plan
(``superscopes plan --script NAME MODEL``) on the full-size configs of tests/fixtures/large_configs.

    PYTHONPATH=. .venv/bin/python scripts/plan_tables.py --write            # all cases (~1 min each), doc + JSON
    PYTHONPATH=. .venv/bin/python scripts/plan_tables.py --only DeepSeek-V3 # one config into the JSON

Each case's numbers go to docs/runs/plan_scripts.json; the doc's table is :func:`render` of that file
(tests/docs_runs/test_docs_runs_plan_scripts.py checks both, and re-plans the cheap cases).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "fixtures" / "large_configs"
MODELS = ("Llama-3.1-405B", "DeepSeek-V3")
JSON = ROOT / "docs" / "runs" / "plan_scripts.json"
DOC = ROOT / "docs" / "ndif.md"
START, END = "<!-- plan-scripts:start -->", "<!-- plan-scripts:end -->"

PER_ITEM = ("token_identity", "attribute_extraction", "entity_resolution", "multihop_cot", "backpatching",
            "entity_resolution_bridge", "controls")
"""Scripts planned for one item (``--limit 1``: one sentence, sample per task, entity or query): their default
runs every item of their data set, one request list per item at full size (thousands of requests), so the
table gives the cost of one item; a run of N items sends about N times its requests and bytes."""

SETTINGS = {
    "multihop_cot": (["--all-queries"], "queries: all (the official only_correct filter keeps a subset)"),
    "attribute_extraction": (["--all-samples", "--tasks", "country_capital_city", "--contexts", "first"],
                             "samples: all (the official only_correct filter keeps a subset); one task, its first "
                             "context (the default runs 8 tasks x every context: 1.6M rows per item on the 405B)"),
    "backpatching": (["--population", "all"], "population: all queries (the paper's population is a subset)"),
    "controls": (["--verbalizer", "{model}", "--fit-texts", "16"],
                 "verbalizer: the same model (the default, SmolLM2-135M, is a hub id this offline table cannot "
                 "read); the map fitted on 16 shared texts (default: all 300, one request each per model). The map "
                 "is fitted on stand-in (zero) vectors, so its d x d weight compresses to almost nothing: the sent "
                 "bytes are a lower bound (the real weight, 7168^2 float32 = 196 MiB at d = 7168, travels in each "
                 "request that patches with it; at d = 16384 it is 1 GiB, over the request cap, and the script "
                 "refuses before its first request)"),
}
"""Script -> (arguments beyond the defaults, the note that says which counts are bounds). Without them a
stage that filters on results (a correct first hop, a wrong composition) would keep what the stand-in answers
(token 0) pass, not an upper bound."""

def settings(name: str) -> tuple[list, str]:
    """The arguments a case runs with beyond the defaults, and its note."""
    extra, note = SETTINGS.get(name, ([], ""))
    if name in PER_ITEM:
        extra, note = [*extra, "--limit", "1"], "; ".join(n for n in ("one item (`--limit 1`)", note) if n)
    return extra, note


def plan_case(name: str, model: str) -> dict:
    from superscopes_nn.output.plan_script import plan_script

    extra, note = settings(name)
    folder = str(CONFIGS / model)
    p = plan_script(name, folder, [a.replace("{model}", folder) for a in extra])
    return {"script": name, "model": model, "args": extra, "note": note,
            "refused": p.refused.replace(f"{ROOT}/", ""),
            "requests": p.requests, "sent_max": max(p.sent, default=0), "sent_total": sum(p.sent),
            "result_max": max(p.result, default=0), "result_total": sum(p.result), "over": p.over}


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.2f} MiB" if n >= 0.01 * 2 ** 20 else f"{n / 1024:.1f} KiB"


def render(cases: list[dict]) -> str:
    """The markdown table (one row per script x model, in registry order) and its notes."""
    lines = ["| script | model | requests | sent per request (max) | sent total | result per request (max) "
             "| result total | over a limit |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in cases:
        if c["refused"]:
            lines.append(f"| {c['script']} | {c['model']} | refused: {c['refused']} | | | | | |")
            continue
        lines.append(f"| {c['script']} | {c['model']} | {c['requests']} | {_mib(c['sent_max'])} | "
                     f"{_mib(c['sent_total'])} | {_mib(c['result_max'])} | {_mib(c['result_total'])} | {c['over']} |")
    notes = {c["script"]: (c["args"], c["note"]) for c in cases if c["note"]}
    lines.append("")
    lines += [f"- {name}: `{' '.join(args)}`: {note}" for name, (args, note) in notes.items()]
    return "\n".join(lines)


def write_doc(cases: list[dict]) -> None:
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{render(cases)}\n{END}{tail}")


def main(argv=None) -> int:
    import experiments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="one config (else every one in MODELS)")
    p.add_argument("--scripts", default=None, help="comma-separated scripts (else every registered one)")
    p.add_argument("--json", default=str(JSON), help="the cases file to update")
    p.add_argument("--write", action="store_true", help="render the JSON into docs/ndif.md afterwards")
    args = p.parse_args(argv)
    path = Path(args.json)
    old = {(c["script"], c["model"]): c for c in json.loads(path.read_text())} if path.exists() else {}
    models = [args.only] if args.only else list(MODELS)
    names = args.scripts.split(",") if args.scripts else list(experiments.EXPERIMENTS)
    for model in models:
        for name in names:
            old[(name, model)] = plan_case(name, model)
            print(json.dumps(old[(name, model)]), file=sys.stderr, flush=True)
            order = {n: i for i, n in enumerate(experiments.EXPERIMENTS)}
            cases = sorted(old.values(), key=lambda c: (order.get(c["script"], 99), MODELS.index(c["model"])))
            path.write_text(json.dumps(cases, indent=1) + "\n")
    if args.write:
        write_doc(cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
