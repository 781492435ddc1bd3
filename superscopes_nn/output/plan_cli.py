"""``superscopes plan``: what a remote sweep would send to NDIF, measured before anything is sent.

    superscopes plan deepseek-ai/DeepSeek-V3 --prompts "Pink Floyd" "Star Wars" --layers all --alphas 1,3,6,9,12,15
    superscopes plan ./Llama-3.1-405B --prompts-file prompts.tsv --sites mlp_out --max-batch-size 64 --chunks-per-request 8

The model is built on meta weights (``load_model(MODEL, remote=True)``: config and tokenizer only), in
the config's own dtype (its ``dtype`` / ``torch_dtype``: bfloat16 for the published large models; float32
where it names none), or ``--dtype``. A local folder without a tokenizer (``tests/fixtures/large_configs/*``
ship only ``config.json``) is planned with the stand-in byte-level tokenizer
:func:`~superscopes_nn.structure.stand_in.tiny_tokenizer` (384 tokens), and one ``note:`` line says so: it
splits English into more tokens than a real tokenizer (:data:`STAND_IN_LENGTH`), so every byte figure is
an upper bound. Prints one line per request (rows, chunks, serialized bytes sent, result bytes at most) under the
plan's summary line; a request over one of NDIF's documented limits is named with the knob to change,
and the command exits 2. See :mod:`superscopes_nn.engine.plan`.
"""

from __future__ import annotations

import argparse
import sys

from ..core.layers import attach_negative_values
from .refusal import ERRORS, one_line

STAND_IN_LENGTH = "about 2.7x"
"""How many more tokens the stand-in tokenizer gives than a real one on the Fig 3 rows (prompt + target
prompt, the 48 prompts: 87.0 tokens per row against 32.5 with Gemma 3's tokenizer, 33.1 with SmolLM2's)."""

DTYPES = ("auto", "float32", "bfloat16", "float16")


def build_parser(cli) -> argparse.ArgumentParser:
    from .help_format import DefaultsFormatter

    p = argparse.ArgumentParser(prog="superscopes plan", description="The NDIF plan of a sweep, before it is sent: "
                                "requests, serialized bytes sent, result bytes at most. Offline for a local folder.",
                                formatter_class=DefaultsFormatter)
    p.add_argument("model", help="HF hub id or a local directory with config.json (and a tokenizer: without one, "
                                 "a stand-in is used and said so)")
    p.add_argument("--dtype", choices=DTYPES, default="auto",
                   help="the model's dtype on the server, which sizes every vector a request returns "
                        "(auto: the config's own dtype / torch_dtype, float32 if it names none)")
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

    prompts = _prompts(args)
    sites = check_sites([s.strip() for s in args.sites.split(",") if s.strip()])
    layers, alphas = parse_layers(args.layers), cli.parse_floats(args.alphas, "--alphas")
    check_batch_size(args.max_batch_size)
    check_int(args.chunks_per_request, "--chunks-per-request", minimum=1)
    check_max_new_tokens(args.max_new_tokens)
    model = build(args.model, args.dtype)
    if layers is None:
        layers = list(range(model_info(model).n_layers))
    rows = sweep_rows(model, prompts, layers=layers, sites=sites, alphas=alphas, position=cli.parse_position(args.position))
    p = plan(model, rows, options_from_args(args))
    print(p.table())
    return 2 if p.problems() else 0


def config_dtype(model: str):
    """The dtype named by the config of ``model`` (a folder's ``config.json`` or a hub id's, read by
    ``AutoConfig``): its ``dtype``, else ``torch_dtype``, else that of its ``text_config``; None if none."""
    import torch
    from transformers import AutoConfig

    from ..core.validate import check_dtype

    config = AutoConfig.from_pretrained(model)
    for c in (config, getattr(config, "text_config", None)):
        value = getattr(c, "dtype", None) if c is not None else None
        if isinstance(value, (torch.dtype, str)) and str(value) != "auto":
            return check_dtype(value)
    return None


def build(model: str, dtype: str = "auto"):
    """``load_model(model, remote=True)`` in ``dtype`` (``auto``: :func:`config_dtype`, float32 if None);
    a local folder without a tokenizer gets the stand-in one, with a ``note:`` line on stderr."""
    from pathlib import Path

    import torch

    from ..structure.models import has_tokenizer, load_model
    from ..structure.stand_in import tiny_tokenizer

    kwargs = {}
    folder = Path(model).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file() and not has_tokenizer(folder):
        kwargs["tokenizer"] = tiny_tokenizer()
        print(f"note: {model} holds no tokenizer: planning with the stand-in byte-level tokenizer "
              f"(superscopes_nn.structure.stand_in.tiny_tokenizer), {STAND_IN_LENGTH} as many tokens per row as a "
              "real one, so the byte figures are upper bounds; add the model's tokenizer files for exact ones",
              file=sys.stderr)
    chosen = (config_dtype(model) if folder.is_dir() else None) if dtype == "auto" else getattr(torch, dtype)
    m = load_model(model, remote=True, dtype=chosen or torch.float32, **kwargs)
    if dtype == "auto" and not folder.is_dir():  # a hub id: its config is read by the build itself
        found = config_dtype(model)
        if found is not None and found != m._module.dtype:
            m._module.to(found)  # meta tensors: only the dtype changes
    return m


def main(argv: list[str], cli) -> int:
    """``superscopes plan ARGS``; ``cli``: :mod:`superscopes_nn.output.cli` (its parsers and error lines;
    passed in by its ``main`` so this module never imports it back)."""
    try:
        args = build_parser(cli).parse_args(attach_negative_values(argv))
    except SystemExit as exit_:  # --help (0) or argparse's own usage error (2)
        return int(exit_.code or 0)
    try:
        return run(args, cli)
    except ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
