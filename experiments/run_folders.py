"""The run folders of the experiment scripts: each records its settings, and a rerun never collides.

A script writes under ``--out`` and keeps the rows of its patched sweep in ``OUT/<name><settings>_rows``
(:func:`rows_dir`): ``<settings>`` (:func:`settings_tag`) is every row-changing flag that differs from its
default, spelled as the flags read (``--layers-4--limit-2``; nothing at the defaults), so a quick run and
the full run, or any two settings, never share rows. :class:`ExperimentParser` refuses, right after parsing
and so before any model loads, a run whose settings already have finished rows under ``--out`` unless
``--resume`` continues them: one ``error:`` line naming ``--resume`` and ``--out``, exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

from superscopes_nn.core.layers import attach_negative_values

def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a module docstring as one line (a ``--help`` description that never stops
    mid-sentence)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


PROG: str | None = None
"""The ``usage:`` name of the script being run (``superscopes run NAME`` sets it; None: :func:`prog`)."""


def prog() -> str | None:
    """The ``usage:`` name: :data:`PROG` if set, else ``python -m experiments.<package>.<module>`` for a
    paper script started as a module or a file (``sys.argv[0]`` under this package), else None (argparse's)."""
    if PROG:
        return PROG
    here, started = Path(__file__).resolve().parent, Path(sys.argv[0] or ".").resolve()
    if started.suffix == ".py" and here in started.parents:
        return "python -m " + ".".join(("experiments",) + started.relative_to(here).with_suffix("").parts)
    return None


EXECUTION_ONLY = ("out", "resume", "progress", "max_batch_size", "batch_size", "settings")
"""Flags that change how a run executes, not its rows: left out of the run folder's settings tag."""

SCORING_ONLY = ("from_csv", "random_csv", "threshold", "boot")
"""Flags that only rescore finished rows: left out of the settings tag too (a rescoring reuses the rows)."""


def _tag_value(value) -> str:
    """A flag value as it appears in a folder name: ``1-7``, ``0,2,4``, ``smollm2-135m``; a value that
    needs cleaning (a path, a minus sign, spaces) or is long gets a 6-digit hash of the exact value too."""
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    clean = re.sub(r"[^A-Za-z0-9.,+]+", "-", text).strip("-")[:24]
    if clean != text:
        clean = f"{clean}-{hashlib.sha1(text.encode()).hexdigest()[:6]}".strip("-")
    return clean


def settings_tag(p: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The run folder's record of every row-changing flag that differs from its default, as the flags read:
    ``""`` at the defaults, else e.g. ``--layers-4--limit-2`` (``--model gemma-3-270m`` is the default).
    Execution-only (:data:`EXECUTION_ONLY`) and scoring-only (:data:`SCORING_ONLY`) flags are not part of it."""
    from superscopes_nn.structure.models import DEFAULT_MODEL

    parts = []
    for action in p._actions:
        dest = action.dest
        if dest in ("help",) + EXECUTION_ONLY + SCORING_ONLY or not hasattr(args, dest):
            continue
        value, default = getattr(args, dest), p.get_default(dest)
        if value == default or (dest == "model" and value == DEFAULT_MODEL and default is None):
            continue
        flag = "--" + dest.replace("_", "-")
        parts.append(flag if value is True else f"{flag}-{_tag_value(value)}")
    return "".join(sorted(parts))


def rows_dir(out, name: str, args: argparse.Namespace, part: str = "") -> Path:
    """``OUT/<name><settings>[_<part>]_rows``: the run store of ``name`` under these settings
    (:func:`settings_tag`; ``part``, e.g. ``source`` / ``random``, names one arm of the run)."""
    return Path(out) / f"{name}{getattr(args, 'settings', '')}{'_' + part if part else ''}_rows"


def _held_runs(out: Path, name: str, tag: str) -> list[Path]:
    """The run stores of ``name`` under ``out`` with settings tag ``tag`` that hold finished rows."""
    held = []
    for d in sorted(out.glob(f"{name}*_rows")) if out.is_dir() else ():
        middle = d.name[len(name):-len("_rows")]
        found = middle[middle.index("--"):].split("_")[0] if "--" in middle else ""
        rows = d / "rows.jsonl"
        if found == tag and rows.is_file() and rows.stat().st_size > 0:
            held.append(d)
    return held


class ExperimentParser(argparse.ArgumentParser):
    """The scripts' parser: ``--help`` shows every default; after parsing, ``args.settings`` is the run
    folder's settings tag (:func:`settings_tag`). With ``--out`` left at its default, a run whose settings
    differ from the defaults writes everything (rows, CSVs, figures, summary) under its own folder
    ``<default out><settings>`` (e.g. ``runs/superscopes_fig3--layers-4--limit-2``), so a quick run never
    overwrites the full run's outputs; an explicit ``--out`` is used as given. A run whose settings already
    have finished rows under ``--out`` is refused without ``--resume`` in one ``error:`` line (exit 2), before
    any model loads. A value starting with ``-`` (``--layers -3--1``) is taken as a value."""

    def __init__(self, *a, rows_name: str, **kw):
        super().__init__(*a, **kw)
        self.rows_name = rows_name

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(attach_negative_values(args), namespace)

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        ns.settings = settings_tag(self, ns)
        if ns.settings and ns.out == self.get_default("out"):
            ns.out = f"{ns.out}{ns.settings}"  # this run's own folder: the full run's outputs stay as they are
        if getattr(ns, "from_csv", None):
            return ns
        held = _held_runs(Path(ns.out), self.rows_name, ns.settings)
        if held and not ns.resume:
            self.exit(2, f"error: {held[0]} already holds finished rows of a run with these settings: add --resume "
                         f"to continue it, or pass --out DIR for a fresh run\n")
        if ns.resume and not held:
            print(f"note: --resume: no finished rows of {self.rows_name} with these settings under {ns.out}; "
                  "starting the run", file=sys.stderr)
        return ns
