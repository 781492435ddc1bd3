"""``superscopes plan``: what a remote sweep would send to NDIF, measured before anything is sent.

    superscopes plan deepseek-ai/DeepSeek-V3 --prompts "Pink Floyd" "Star Wars" --layers all --alphas 1,3,6,9,12,15
    superscopes plan ./Llama-3.1-405B --prompts-file prompts.tsv --sites mlp_out --max-batch-size 64 --chunks-per-request 8

The model is built on meta weights (``load_model(MODEL, remote=True)``: config and tokenizer only).
Prints one line per request (rows, chunks, serialized bytes sent, result bytes at most) under the
plan's summary line; a request over one of NDIF's documented limits is named with the knob to change,
and the command exits 2. See :mod:`superscopes_nn.engine.plan`.
"""

from __future__ import annotations

import argparse
import sys

from ..core.layers import attach_negative_values



def build_parser(cli) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="superscopes plan", description="the NDIF plan of a sweep, before it is sent")
    p.add_argument("model", help="HF hub id or a local directory with config.json and a tokenizer")
    p.add_argument("--prompts", nargs="+", default=None, help="source prompts")
    p.add_argument("--prompts-file", default=None, help="one prompt per line (a TSV's first column; # comments)")
    cli.add_run_grid_args(p, "all")
    p.add_argument("--chunks-per-request", default=8, type=int, help="batches sent as one NDIF request")
    return p


def _prompts(args) -> list[str]:
    prompts = list(args.prompts or [])
    if args.prompts_file:
        with open(args.prompts_file, encoding="utf-8") as fh:
            prompts += [ln.split("\t")[0].strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    if not prompts:
        raise ValueError("no prompts: pass --prompts or --prompts-file")
    return prompts


def run(args, cli) -> int:
    from ..core.layers import parse_layers
    from ..core.options import options_from_args
    from ..core.validate import check_batch_size, check_int, check_max_new_tokens
    from ..engine.plan import plan
    from ..engine.rows import check_sites, sweep_rows
    from ..structure.info import model_info
    from ..structure.models import load_model

    prompts = _prompts(args)
    sites = check_sites([s.strip() for s in args.sites.split(",") if s.strip()])
    layers, alphas = parse_layers(args.layers), cli.parse_floats(args.alphas, "--alphas")
    check_batch_size(args.max_batch_size)
    check_int(args.chunks_per_request, "--chunks-per-request", minimum=1)
    check_max_new_tokens(args.max_new_tokens)
    model = load_model(args.model, remote=True)
    if layers is None:
        layers = list(range(model_info(model).n_layers))
    rows = sweep_rows(model, prompts, layers=layers, sites=sites, alphas=alphas, position=cli.parse_position(args.position))
    p = plan(model, rows, options_from_args(args))
    print(p.table())
    return 2 if p.problems() else 0


def main(argv: list[str], cli) -> int:
    """``superscopes plan ARGS``; ``cli``: :mod:`superscopes_nn.output.cli` (its parsers and error lines;
    passed in by its ``main`` so this module never imports it back)."""
    args = build_parser(cli).parse_args(attach_negative_values(argv))
    try:
        return run(args, cli)
    except cli.ERRORS as err:
        print(f"error: {cli.one_line(err)}", file=sys.stderr)
        return 2
