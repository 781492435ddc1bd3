"""The ``superscopes`` command line.

    superscopes explain "Alexander the Great" --position Great --sites mlp_out --layers 0-8 --alphas 1,3,6,9,12,15
    superscopes explain "Alexander the Great" --position Great --sites mlp_out --target-site same   # same-site write
    superscopes demo                      # the README's main job on the embedded default model
    superscopes report runs/RUN_DIR       # a self-contained HTML explorer of a finished sweep
    superscopes plan MODEL --prompts ...  # what a remote sweep sends to NDIF, measured first (plan_cli)

Bad input prints one line ``error: ...`` naming the value and exits 2 (no traceback). The earlier
flags ``--token``, ``--site``, ``--amps`` and ``--batch-size`` still work for one release, with one
``warning:`` line each (:mod:`superscopes_nn.core.deprecation`).
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime
from pathlib import Path

from .help_format import DefaultsFormatter
from .refusal import guarded
from ..core.dirlock import check_run_dir
from ..core.deprecation import add_renamed_flag
from ..core.layers import attach_negative_values, parse_layers
from ..core.options import add_remote_argument, options_from_args
from ..core.validate import check_alphas, check_batch_size, check_int, check_max_new_tokens, check_remote
from ..structure.info import model_info
from ..remote.hosts import allow_insecure_http

def parse_floats(spec: str, what: str) -> list[float]:
    """``"1,3,6"`` -> ``[1.0, 3.0, 6.0]``: amplification factors, checked by :func:`~superscopes_nn.core.validate.check_alphas`."""
    try:
        vals = [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"bad {what} {spec!r}: use comma-separated numbers, e.g. 1,3,6") from None
    if not vals:
        raise ValueError(f"bad {what} {spec!r}: empty list")
    try:
        return check_alphas(vals)
    except ValueError as err:
        raise ValueError(f"bad {what} {spec!r}: {err}") from None


def parse_position(spec: str | None):
    if spec is None:
        return -1
    try:
        return int(spec)
    except ValueError:
        return spec


def _table(df, value: str = "interpretation", width: int = 28) -> str:
    import pandas as pd

    def clip(s):
        s = " ".join(str(s).split())
        return s if len(s) <= width else s[: width - 1] + "…"

    blocks = []
    for (prompt, site), g in df.groupby(["source_prompt", "site"], sort=False):
        t = g.pivot_table(index="source_layer", columns="alpha", values=value, aggfunc="first")
        t = t.map(clip) if hasattr(t, "map") else t.applymap(clip)
        t.columns = [f"α={a:g}" for a in t.columns]
        with pd.option_context("display.max_colwidth", width + 2, "display.width", 250):
            blocks.append(f"{prompt!r} [{site}] token {g.source_token.iloc[0]!r}\n{t.to_string()}")
    return "\n\n".join(blocks)


def add_run_grid_args(p: argparse.ArgumentParser, layers: str) -> None:
    """``--position --sites --layers --alphas --max-new-tokens --max-batch-size`` (``superscopes explain`` and
    ``superscopes plan``), with the earlier ``--token --site --amps --batch-size`` kept for one release."""
    p.add_argument("--position", default=None, help="source position: an int or a token string (default: last token)")
    p.add_argument("--sites", default="mlp_out", help="residual | mlp_out | attn_out | mlp_in (comma list ok)")
    p.add_argument("--layers", default=layers, help="source layers: 0-8, 1,3,5, -3--1 (from the end) or all")
    p.add_argument("--alphas", default="1,3,6,9,12,15", help="amplification factors alpha")
    p.add_argument("--max-new-tokens", default=10, type=int, help="tokens generated per cell")
    p.add_argument("--max-batch-size", default=64, type=int, help="rows per batched generate (a chunk)")
    add_renamed_flag(p, "--token", "--position", "position")
    add_renamed_flag(p, "--site", "--sites", "sites")
    add_renamed_flag(p, "--amps", "--alphas", "alphas")
    add_renamed_flag(p, "--batch-size", "--max-batch-size", "max_batch_size", type=int)


def add_explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="source prompt, e.g. 'Alexander the Great'")
    add_run_grid_args(p, "0-8")
    p.add_argument("--model", default=None, help="embedded name (gemma-3-270m, smollm2-135m), HF id or path "
                   "(default: gemma-3-270m; with --resume: the run's own)")
    p.add_argument("--target-prompt", default=None, help="target prompt with the placeholder (default: entity description)")
    p.add_argument("--placeholder", default="x", help="placeholder word in the target prompt")
    p.add_argument("--target-layer", default=None, type=int, help="fixed target layer (default: same as source)")
    p.add_argument("--target-site", default="residual",
                   help="where the amplified vector is written in the target: residual (default; the hidden state, "
                        "the official Superscopes protocol), same (the source's own site: Patchscopes' module='mlp') "
                        "or a site name")
    add_remote_argument(p, parse_now=False)
    p.add_argument("--allow-insecure-http", action="store_true", help="accept a plain http:// --remote host "
                   "other than loopback (results and the API key travel unencrypted)")
    p.add_argument("--out", default=None, help="run directory (default runs/explain-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out, skipping finished rows; every setting not given again "
                        "(--model, --sites, --layers, ...) is read from its config.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


STORED = {"model": "model", "sites": "sites", "layers": "layers", "alphas": "alphas", "position": "token",
          "target_prompt": "target_prompt", "placeholder": "placeholder", "target_layer": "target_layer",
          "target_site": "target_site", "max_new_tokens": "max_new_tokens", "max_batch_size": "max_batch_size"}
"""``explain`` flag (argparse dest) -> its ``config.json`` key, for ``--resume``."""


def _flag_text(dest: str, value):
    """A stored config value as the flag's text (``["mlp_out"]`` -> ``"mlp_out"``, ``[0, 1]`` -> ``"0,1"``)."""
    if dest in ("sites", "layers", "alphas") and isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return value


def stored_settings(args, argv: list[str]) -> argparse.Namespace:
    """``args`` with every flag not given in ``argv`` taken from ``--out``'s ``config.json`` when ``--resume``
    continues a run there (so ``explain PROMPT --out DIR --resume`` resumes the run as it was started, model
    included, without loading another model first). Without ``--resume`` or a stored config: ``args``."""
    import json

    path = Path(args.out) / "config.json" if args.resume and args.out else None
    if path is None or not path.is_file():
        return args
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return args  # the run store names the broken file when it opens
    if not isinstance(stored, dict) or stored.get("command") != "explain":
        return args
    given = argparse.ArgumentParser(add_help=False)
    add_explain_args(given)
    for action in given._actions:
        action.default = argparse.SUPPRESS
    explicit = set(vars(given.parse_known_args(attach_negative_values(argv[1:]))[0]))
    for dest, key in STORED.items():
        if dest not in explicit and key in stored:
            setattr(args, dest, _flag_text(dest, stored[key]))
    return args


def parse_target_site(spec: str) -> str | None:
    """``--target-site`` -> ``Target.site``. ``residual`` (default) = the target's hidden state (layer
    output), where the official code writes every source (GalNivs/Superscopes
    ``superscopes_application/superscopes_utils.py`` ``patchscope_interpret``: ``set_hs_patch_hooks(...,
    module="hs")``); ``same`` -> None = the source's own site (Patchscopes' ``module="mlp"``); or a site name."""
    from ..engine.rows import check_sites

    spec = spec.strip()
    if spec == "same":
        return None
    try:
        return check_sites([spec])[0]
    except ValueError:
        raise ValueError(f"bad --target-site {spec!r}: use residual (hidden state), same or a site name") from None


def protocol_line(sites: list[str], target_site: str | None, placeholder: str, at_last: bool) -> str:
    """The header line of ``explain``: which protocol ran (``at_last``: every row writes the target
    prompt's last token, as the official code does), and how to run the other one."""
    src, where = "/".join(sites), f"at {placeholder!r}" + ("" if at_last else " (not the target's last token)")
    if target_site == "residual":
        name = "official Superscopes" if at_last else "hidden-state write"
        return (f"protocol: {name}: α × {src} replaces the target's hidden state (residual, the layer output) "
                f"{where}; --target-site same writes the source's own site instead")
    if target_site is None:
        return (f"protocol: same-site (Patchscopes' module='mlp'): α × {src} replaces the target's {src} {where}; "
                f"the official Superscopes protocol writes the hidden state (--target-site residual)")
    return f"protocol: α × {src} replaces the target's {target_site} {where} (--target-site {target_site})"


def explain(args) -> int:

    from ..structure.models import DEFAULT_MODEL, load_model
    from ..engine.rows import check_sites, sweep_rows
    from ..engine.run import run_rows
    from ..core.specs import ENTITY_PROMPT, Target

    # every check that needs no model comes first: a bad value or output directory costs no model load
    args = stored_settings(args, getattr(args, "argv", []))
    sites = check_sites([s.strip() for s in args.sites.split(",") if s.strip()] or [args.sites])
    layers = parse_layers(args.layers)
    alphas = parse_floats(args.alphas, "--alphas")
    opts = options_from_args(args)  # --remote parsed here, before the model loads
    if args.allow_insecure_http and check_remote(opts.remote).host:
        allow_insecure_http(opts.remote)
    max_new_tokens = check_max_new_tokens(args.max_new_tokens)
    batch_size = check_batch_size(args.max_batch_size)
    target_layer = None if args.target_layer is None else check_int(args.target_layer, "--target-layer")
    target_site = parse_target_site(args.target_site)
    out = Path(args.out) if args.out else Path("runs") / datetime.now().strftime("explain-%Y%m%d-%H%M%S")
    check_run_dir(out)
    if not args.resume and (out / "rows.jsonl").is_file() and (out / "rows.jsonl").stat().st_size:
        raise FileExistsError(f"run directory {out} already holds finished rows: add --resume to continue it, "
                              f"or pass another --out for a fresh run")
    name = args.model or DEFAULT_MODEL
    model = load_model(name, remote=opts.ndif)  # NDIF or a host: meta weights
    if layers is None:
        layers = list(range(model_info(model).n_layers))
    target = Target(args.target_prompt or ENTITY_PROMPT, layer=target_layer, placeholder=args.placeholder,
                    site=target_site)
    rows = sweep_rows(model, [args.prompt], layers=layers, sites=sites, alphas=alphas,
                      position=parse_position(args.position), target=target)
    layers, alphas = list(dict.fromkeys(layers)), list(dict.fromkeys(alphas))  # as sweep_rows ran them
    config = {
        "command": "explain", "prompts": [args.prompt], "token": args.position, "sites": sites,
        "layers": layers, "alphas": alphas, "target_prompt": target.prompt, "placeholder": target.placeholder,
        "target_layer": target_layer, "target_site": args.target_site.strip(), "max_new_tokens": max_new_tokens,
        "max_batch_size": batch_size}
    at_last = all(r.target_position == len(r.target_ids) - 1 for r in rows)
    print(protocol_line(sites, target_site, target.placeholder, at_last), flush=True)  # the header: which protocol
    df = run_rows(model, rows, opts.replace(run_dir=out, config=config))
    scored, line = scored_with_chance(df)
    print(_table(df))
    print(line)
    from .report_scores import SCORES_FILE, save_scores

    save_scores(df, scored, out)  # superscopes report colours the grid by them
    print(f"\nwrote {out / 'results.csv'}, {out / 'results.parquet'} ({len(df)} rows) and {out / SCORES_FILE}")
    return 0


def demo_dir(model: str | None) -> Path:
    """The demo's own run directory: ``runs/demo`` (default model) or ``runs/demo-<model>``."""
    if model is None:
        return Path("runs") / "demo"
    return Path("runs") / ("demo-" + (re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model).strip("._") or "model"))


DEMO_PROMPT = "Alexander the Great"
"""Chosen by measurement (docs/results_superscopes.md, "The demo prompt"): of the 48 Figure 3 prompts
under the official protocol on Gemma 3 270M, the one with the most cells above its shuffled-prompt
chance level (4 of 42 cells pass, 0.45 expected by chance)."""


def scored_with_chance(df):
    """``df`` scored (:func:`~superscopes_nn.science.superscopes.add_scores`) with its chance level
    (:func:`~superscopes_nn.science.superscopes.with_chance`), and the chance line printed beside the table."""
    from ..science.superscopes import SUCCESS_THRESHOLD, add_scores, with_chance

    df = with_chance(add_scores(df))
    passed = int((df.score_source_cosine > SUCCESS_THRESHOLD).sum())
    line = (f"{passed} of {len(df)} cells have cosine > {SUCCESS_THRESHOLD:g} to the prompt; "
            f"chance line {float(df.chance_rate.sum()):.1f} (the same texts scored against other entity names)")
    return df, line


def demo(args) -> int:
    """The README's main job: the official Superscopes protocol (α x MLP output written into the
    target's hidden state at its last token) on :data:`DEMO_PROMPT`, layers 1-7, every cell scored,
    the report coloured by score with the chosen α marked and the chance line in its title.
    Rerunning it in the same folder resumes (and so reuses) its own directory."""

    from ..structure.models import DEFAULT_MODEL, load_model
    from .report import write_report
    from ..science.superscopes import MLP_ALPHAS, detect_alpha, superscope

    out = Path(args.out) if args.out else demo_dir(args.model)
    check_run_dir(out)  # before the model loads
    name = args.model or DEFAULT_MODEL
    model = load_model(name)
    layers = [l for l in range(1, 8) if l < model_info(model).n_layers]
    config = {"command": "demo", "prompt": DEMO_PROMPT, "site": "mlp_out", "protocol": "official",
              "layers": layers, "alphas": [float(a) for a in MLP_ALPHAS]}
    df = superscope(model, DEMO_PROMPT, sites="mlp_out", layers=layers, alphas=MLP_ALPHAS, protocol="official",
                    run_dir=out, config=config, resume=True, progress=True)
    df, line = scored_with_chance(df)
    print(_table(df))
    print("\nchosen α per layer (highest score_source_cosine):")
    for r in detect_alpha(df).itertuples(index=False):
        print(f"  layer {r.source_layer}: α={r.alpha:g} cos {r.score:.2f} {r.interpretation!r}")
    print(line)
    path = write_report(df, out / "report.html", config={**config, "chance_line": line},
                        score_column="score_source_cosine", title=f"Superscopes demo: {DEMO_PROMPT} ({name}). {line}")
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="superscopes", description="Let a language model describe its own hidden states.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="sweep layers x amplification for one prompt (official protocol by default) "
                                       "and print the interpretations with their chance line",
                       formatter_class=DefaultsFormatter, description="Sweep source layers x amplification α for one "
                       "prompt, print the interpretation grid and its chance line, and keep the run in --out "
                       "(results.csv, results.parquet, scores.jsonl; superscopes report OUT draws it). "
                       "At the defaults (9 layers x 6 α = 54 rows) on Gemma 3 270M: about 15 s on 2 CPU cores, model load "
                       "and scoring included.")
    add_explain_args(e)
    d = sub.add_parser("demo", help="the README demo: the official Superscopes protocol on one prompt, scored, with its chance line",
                       formatter_class=DefaultsFormatter)
    d.add_argument("--model", default=None, help="model (default: gemma-3-270m)")
    d.add_argument("--out", default=None, help="run directory (default runs/demo; a rerun resumes it)")
    d.add_argument("--resume", action="store_true", help="accepted for symmetry: the demo always resumes its own directory")
    r = sub.add_parser("report", help="write the HTML explorer of a run directory")
    r.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("run", help="run a paper script by name from any directory (superscopes run --list)", add_help=False)
    sub.add_parser("plan", help="what a remote sweep would send to NDIF, measured before anything is sent "
                                "(superscopes plan MODEL --prompts ...; a paper script's: superscopes plan "
                                "--script NAME MODEL)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "report":
        from .report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "run":
        from .run_cmd import main as run_main

        return run_main(argv[1:])
    if argv[:2] == ["plan", "--script"]:  # a whole paper script's NDIF plan (plan_script)
        from .plan_script import main as plan_script_main

        return plan_script_main(argv[2:])
    if argv and argv[0] == "plan":
        from .plan_cli import main as plan_main

        return plan_main(argv[1:], sys.modules[__name__])
    args = build_parser().parse_args(attach_negative_values(argv))
    args.argv = list(argv)
    return guarded(lambda: {"explain": explain, "demo": demo}[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
