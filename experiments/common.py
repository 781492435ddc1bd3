"""What every experiment script shares: the argument parser, model setup, run-store flags,
CSV round trips and figure saving, and the two-hop queries (loading, aliases, the answer test) that
the back-patching, multi-hop CoT and bridge-resolution experiments share.

Each script writes under ``--out`` (default ``runs/<script name>``) and keeps the rows of its patched
sweep in ``OUT/<name><settings>_rows`` (``config.json`` + ``rows.jsonl``, appended per finished chunk, see
:mod:`superscopes_nn.core.store`): ``<settings>`` records every row-changing flag that differs from its
default (:func:`~experiments.run_folders.settings_tag`, e.g. ``fig3_gemma-3-270m_official--layers-4--limit-2_source_rows``), so a
run with other settings never meets another's rows. A crash or Ctrl-C loses at most the chunk in flight;
the same command with ``--resume`` skips the finished rows, and without it is refused in one line before
the model loads (:class:`~experiments.run_folders.ExperimentParser`). Baseline generations (unpatched) are cheap and rerun.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from experiments import run_folders
from experiments.run_folders import ExperimentParser, rows_dir
from superscopes_nn.core.deprecation import add_renamed_flag
from superscopes_nn.core.layers import parse_layers, resolve_layers
from superscopes_nn.core.options import RunOptions, add_remote_argument, options_from_args
from superscopes_nn.core.validate import check_remote
from superscopes_nn.core.tables import read_csv, write_csv
from superscopes_nn.output.help_format import DefaultsFormatter
from superscopes_nn.science.scoring import answer_match

NOT_CONFIG = ("out", "resume", "progress", "from_csv", "max_batch_size", "batch_size", "control", "control_seed",
              "settings")
"""Arguments that do not change a row's result, so a resumed run may change them."""

first_paragraph = run_folders.first_paragraph
"""A module docstring's first paragraph on one line: each script's ``--help`` description."""

DECODINGS = ("greedy", "llama2-chat")
"""``--decoding``: ``greedy`` (default; a named deviation from the Superscopes code) or
``llama2-chat`` (:data:`~superscopes_nn.core.sampling.LLAMA2_CHAT`: temperature 0.6, top-p 0.9,
the sampling the paper's Llama-2-13b-chat ran under), seeded per row by ``--seed``."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ arguments


def parser(description: str, *, out: str, max_new_tokens: int = 10, layers_help: str | None = None,
           two_hop: bool = False, limit_help: str = "only the first N items",
           limit: int | None = None, name: str | None = None, runtime: str | None = None) -> argparse.ArgumentParser:
    """The flags every script takes: ``--model --out --limit --max-new-tokens --max-batch-size
    --remote --progress --resume`` (+ ``--layers`` with ``layers_help``; + ``--data --stratify``
    for the two-hop scripts). ``name``: the prefix of the script's run folders (default: ``out``'s last
    part); ``runtime``: how long a run at the defaults takes, shown under ``--help``."""
    epilog = f"A run at the defaults takes {runtime}; --limit / --layers make a quick one." if runtime else None
    p = ExperimentParser(prog=run_folders.prog(), description=description, epilog=epilog, rows_name=name or Path(out).name,
                         formatter_class=DefaultsFormatter)
    p.add_argument("--model", default=None, help="model name (default: the library default, Gemma 3 270M)")
    p.add_argument("--out", default=out, help="output directory (left unset, a run with other settings "
                   "uses OUT<settings>; the rows: OUT/<name><settings>_rows)")
    p.add_argument("--limit", type=int, default=limit, help=limit_help)
    if two_hop:
        p.add_argument("--data", default=None, help="two-hop JSONL (default: the package's data/two_hop.jsonl)")
        p.add_argument("--stratify", action="store_true", help="with --limit: round robin over relation pairs")
    if layers_help:
        p.add_argument("--layers", default=None, help=layers_help)
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens generated per patched row")
    p.add_argument("--max-batch-size", dest="max_batch_size", type=int, default=64,
                   help="rows per batched generate")
    add_renamed_flag(p, "--batch-size", "--max-batch-size", "max_batch_size", type=int)
    add_remote_argument(p)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--resume", action="store_true",
                   help="continue the run with these settings kept under OUT, skipping the patched rows already there")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Refuse a ``--limit`` / ``--layer-stride`` below 1 with the parser's own error."""
    for name in ("limit", "layer_stride"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    return args


def add_decoding(p: argparse.ArgumentParser) -> None:
    """``--decoding greedy|llama2-chat`` and ``--seed`` (see :data:`DECODINGS`)."""
    p.add_argument("--decoding", choices=DECODINGS, default="greedy",
                   help="greedy (default, a named deviation) or llama2-chat: sample with temperature 0.6, top-p 0.9 "
                        "as the paper's Llama-2-13b-chat did (per-row seeded, batch-independent; local runs only)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (with --decoding llama2-chat; default 0)")


def decoding_of(p: argparse.ArgumentParser, args: argparse.Namespace):
    """The :class:`~superscopes_nn.core.sampling.Sampling` of ``--decoding`` / ``--seed`` (None: greedy)."""
    from dataclasses import replace

    from superscopes_nn.core.sampling import LLAMA2_CHAT

    if getattr(args, "decoding", "greedy") == "greedy":
        if getattr(args, "seed", None) is not None:
            p.error("--seed needs --decoding llama2-chat (greedy decoding draws nothing)")
        return None
    if args.remote:
        p.error(f"--decoding {args.decoding} runs locally only (no --remote): sampling is not sent to NDIF")
    return replace(LLAMA2_CHAT, seed=0 if args.seed is None else args.seed)


def decoding_tag(args: argparse.Namespace) -> str:
    """The output stem's decoding part: ``""`` for greedy (names as before), else ``_llama2-chat-s<seed>``."""
    if getattr(args, "decoding", "greedy") == "greedy":
        return ""
    return f"_{args.decoding}-s{0 if args.seed is None else args.seed}"


def decoding_config(args: argparse.Namespace) -> dict:
    """The run-store config's decoding keys: none for greedy (older run directories still resume)."""
    if getattr(args, "decoding", "greedy") == "greedy":
        return {}
    return {"decoding": args.decoding, "sampling_seed": 0 if args.seed is None else args.seed}


def run_config_of(args: argparse.Namespace) -> dict:
    """The run-store config of a script's arguments: every argument that changes a row's result."""
    config = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG and k not in ("decoding", "seed")}
    config.update(decoding_config(args))
    return config


def run_options(args: argparse.Namespace, out, name: str, **settings) -> RunOptions:
    """The :class:`~superscopes_nn.core.options.RunOptions` of a script's arguments
    (:func:`~superscopes_nn.core.options.options_from_args`, the helper the ``superscopes`` command uses
    too), keeping its rows in :func:`rows_dir` with :func:`run_config_of`; ``settings`` replace fields."""
    return options_from_args(args, run_dir=rows_dir(out, name, args), config=run_config_of(args), **settings)


CONTROLS = ("none", "random")
"""``control`` of the experiments: ``random`` adds the norm-matched random-vector arm (:func:`random_arm`)."""


def check_control(control: str) -> str:
    """``control`` if it is one of :data:`CONTROLS`; else a one-line ``ValueError`` naming it."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    return control


def add_control(p: argparse.ArgumentParser) -> None:
    """``--control none|random`` and ``--control-seed``: the norm-matched random-vector arm."""
    p.add_argument("--control", choices=CONTROLS, default="none",
                   help="random: also run every patched row with a norm-matched random vector "
                        "(superscopes_nn.science.random_control; doubles the patched generation)")
    p.add_argument("--control-seed", type=int, default=0, help="seed of the random directions")


def random_arm(model, rows, options: RunOptions | None = None, *, target_model=None, seed: int = 0,
               **settings) -> pd.DataFrame:
    """The rows' norm-matched random-vector counterparts (same sources, targets, α), run like them.

    ``rows``: resolved rows (:func:`superscopes_nn.engine.rows.resolve`) of the real arm; ``options`` /
    ``settings``: as :func:`superscopes_nn.engine.run.run_rows` takes them (give the random arm its own
    ``run_dir``; its config gains ``control_seed``)."""
    from superscopes_nn.science.random_control import random_rows
    from superscopes_nn.engine.run import run_rows

    opts = RunOptions.of(options, **settings)
    if opts.config is not None:  # the seed is part of the random arm's run, not of the real one
        opts = opts.replace(config={**opts.config, "control_seed": int(seed)})
    return run_rows(model, random_rows(rows, target_model or model, seed), opts, target_model=target_model)


def model_layers(spec: str | None, n_layers: int, default: Sequence[int] | None = None) -> list[int]:
    """The layers ``--layers`` names (:func:`superscopes_nn.core.layers.parse_layers`: ``"1-7"``, ``"0,2,4"``,
    ``"-3--1"``, ``"all"``) on a model with ``n_layers``, sorted; None = ``default``, else all."""
    if spec is None:
        return resolve_layers(list(range(n_layers)) if default is None else list(default), n_layers)
    return resolve_layers(parse_layers(spec), n_layers)


def int_list(spec: str | None) -> list[int] | None:
    """``"2,5,8"`` -> ``[2, 5, 8]``; None or ``""`` -> None."""
    return None if not spec else [int(x) for x in spec.split(",") if x.strip()]


# ------------------------------------------------------------------ model


def on_ndif(args: argparse.Namespace) -> bool:
    """True when ``--remote`` sends the patched runs to NDIF (bare ``--remote``, ``true`` or a host)."""
    return check_remote(getattr(args, "remote", False)).is_ndif


def refuse_remote(args: argparse.Namespace, step: str) -> None:
    """A one-line ValueError when ``--remote`` goes to NDIF and ``step`` needs the model's weights
    here (e.g. fine-tuning a verbalizer): call it before anything loads."""
    if on_ndif(args):
        raise ValueError(f"--remote: {step} needs the model's weights on this machine, which a run on NDIF does "
                         "not load; run it without --remote (or with --remote local)")


def load(args: argparse.Namespace, name: str | None = None):
    """``load_model(name)`` (default ``--model``, else the library default) as ``--remote`` needs it:
    meta weights only (config + tokenizer) when the runs go to NDIF, the real weights otherwise."""
    from superscopes_nn import load_model

    name = args.model if name is None else name
    t0 = time.perf_counter()
    remote = on_ndif(args)
    model = load_model(name, remote=remote) if name else load_model(remote=remote)
    log(f"loaded {name or 'the default model'}{' (meta weights, for NDIF)' if remote else ''} "
        f"in {time.perf_counter() - t0:.1f} s")
    return model


def setup(args: argparse.Namespace, model=None):
    """``(model, out)``: the given model or :func:`load` (meta weights under ``--remote`` to NDIF),
    and the created output folder."""
    if model is None:
        model = load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return model, out


# ------------------------------------------------------------------ files


def save_csv(df: pd.DataFrame, path: Path) -> Path:
    """Every row, every text quoted so that any text reads back (:func:`superscopes_nn.core.tables.write_csv`:
    bare ``\\r``, NUL, quotes, commas), token ids as JSON lists; ``.csv.gz`` paths are gzipped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_csv(df, path)


def read_saved_csv(path) -> pd.DataFrame:
    """A CSV written by :func:`save_csv`, back as a sweep DataFrame without score columns
    (empty interpretations stay ``""``; error rows get ``interpretation`` None). Reads the
    older minimally quoted files too."""
    df = read_csv(path)
    df = df.drop(columns=[c for c in df.columns if c.startswith("score_")])
    if "error" in df:
        errors = [e if isinstance(e, str) and e else None for e in df.error]
        df["interpretation"] = pd.Series([None if e else ("" if not isinstance(t, str) else t)
                                          for t, e in zip(df.interpretation, errors)], index=df.index, dtype=object)
        df["error"] = pd.Series(errors, index=df.index, dtype=object)
    return df


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Tight layout, save, close; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def some_pair_chance(rows: pd.DataFrame, references, *, item: str, rule: str, n_boot: int = 2000,
                     random_rows: pd.DataFrame | None = None):
    """"Some (source, target) layer pair answers" per item beside its chance level: each item's
    patched outputs (every pair of ``rows``) matched under ``rule`` (:data:`~superscopes_nn.science.scoring.MATCH_RULES`)
    against another item's ``references`` (item -> aliases or answer), exact over derangements
    (:func:`superscopes_nn.science.chance.chance_table`, one arm "some pair"). ``random_rows``: the same
    pairs run with norm-matched random vectors (:func:`superscopes_nn.science.random_control.random_rows`;
    rows of other items are dropped), adds ``random`` / ``above_random``. None with fewer than 2 items."""
    from superscopes_nn.science.chance import alias_pairs, chance_table

    if rows.empty or rows[item].nunique() < 2:
        return None

    def paired(df):
        return df.assign(pair=[f"{s}->{t}" for s, t in zip(df.source_layer, df.target_layer)])

    rnd = None if random_rows is None else paired(random_rows[random_rows[item].isin(set(rows[item]))])
    return chance_table(paired(rows), alias_pairs(rule), threshold=0.5, item=item, reference=references, by=(),
                        choice="pair", arms={"some pair": None}, per_choice=False, n_boot=n_boot, random_df=rnd)


def chance_line(chance: pd.DataFrame) -> str:
    """A one-row chance table (:func:`superscopes_nn.science.chance.chance_table`) as rates with their 95%
    intervals and n: raw, shuffled null, raw minus it, and the random-vector rate and raw minus it
    when the table has the random arm."""
    c = chance.iloc[0]
    keys = ("raw", "null", "above") + (("random", "above_random") if "random" in chance else ())
    return ", ".join(f"{k} {c[k]:+.2f} [{c[k + '_lo']:+.2f}, {c[k + '_hi']:+.2f}]" if k.startswith("above")
                     else f"{k} {c[k]:.2f} [{c[k + '_lo']:.2f}, {c[k + '_hi']:.2f}]" for k in keys) + f" (n = {c.n})"


def report_pair_chance(chance, path: Path, null: str) -> None:
    """Save a "some (l, l*) pair answers" chance table (:func:`superscopes_nn.science.chance.chance_table`,
    one row) to ``path`` and print it: raw count, the ``null`` chance count (and the random-vector
    count), then every rate with its interval (:func:`chance_line`)."""
    if chance is None:
        return
    chance.to_csv(path, index=False)
    c = chance.iloc[0]
    rnd = f"; random vector {c.random_count:.0f}/{c.n}" if "random" in chance else ""
    print(f"some pair answers {c.raw_count:.0f}/{c.n}; {null} chance {c.null_count:.1f}/{c.n}{rnd}: "
          f"{chance_line(chance)}")


# ------------------------------------------------------------------ two-hop queries

QUERY_FIELDS = ("id", "two_hop_prompt", "first_hop_prompt", "e1", "r1", "bridge", "bridge_aliases", "r2",
                "second_hop_prompt", "answer", "answer_aliases")


def load_queries(queries=None, limit: int | None = None, stratify: bool = False) -> pd.DataFrame:
    """Two-hop queries as a DataFrame with :data:`QUERY_FIELDS` (default ``load_two_hop()``).

    ``queries``: None, a path to a JSONL file, a ``datasets.Dataset``, a DataFrame or a
    list of dicts. ``limit`` keeps the first ``limit`` queries; with ``stratify`` it takes
    them round robin over the (r1, r2) relation pairs, so a small subset covers every
    relation pair. Duplicate ids keep the first.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if queries is None or isinstance(queries, (str, Path)):
        from superscopes_nn.data.datasets import load_two_hop

        queries = load_two_hop(queries)
    if hasattr(queries, "to_pandas"):
        queries = queries.to_pandas()
    df = queries.copy() if isinstance(queries, pd.DataFrame) else pd.DataFrame([dict(q) for q in queries])
    missing = [f for f in QUERY_FIELDS if f not in df.columns]
    if missing:
        raise ValueError(f"two-hop queries lack fields {missing}; have {list(df.columns)}")
    for col in ("bridge_aliases", "answer_aliases"):
        df[col] = [list(a) if a is not None and not isinstance(a, float) else [] for a in df[col]]
    df = df[list(QUERY_FIELDS)].drop_duplicates("id").reset_index(drop=True)
    if limit is not None:
        if stratify:
            rank = df.groupby(["r1", "r2"], sort=False).cumcount()
            df = df.iloc[rank.sort_values(kind="stable").index]
        df = df.head(limit).reset_index(drop=True)
    if df.empty:
        raise ValueError("no two-hop queries given")
    return df


def alias_match(text, aliases: Iterable[str], rule: str = "word") -> bool:
    """:func:`superscopes_nn.science.scoring.answer_match` under ``rule`` (:data:`MATCH_RULES`; ``word`` =
    case-insensitive whole words, aliases of length <= 1 ignored); a missing text (an errored row)
    never matches."""
    return answer_match(text, list(aliases), rule)


def answer_aliases(q) -> list[str]:
    return [q["answer"], *list(q["answer_aliases"])]


def bridge_aliases(q) -> list[str]:
    return [q["bridge"], *list(q["bridge_aliases"])]
