"""The run-store flags every experiment script shares.

Each script keeps the rows of its patched sweep in ``OUT/<name>_rows`` (``config.json`` +
``rows.jsonl``, appended per finished chunk, see :mod:`superscopes_nn.store`), so a
crash or Ctrl-C loses at most the chunk in flight; the same command with ``--resume``
skips the finished rows. Baseline generations (unpatched) are cheap and rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

NOT_CONFIG = ("out", "resume", "progress", "from_csv", "max_batch_size", "batch_size")
"""Arguments that do not change a row's result, so a resumed run may change them."""


def add_resume(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--resume", action="store_true",
                   help="continue the run kept in OUT/<name>_rows, skipping the patched rows already there")
    return p


def store_kwargs(args: argparse.Namespace, out, name: str) -> dict:
    """``run_dir`` (``out/<name>_rows``) / ``resume`` / ``config`` (the script's arguments) for an experiment."""
    config = {k: v for k, v in vars(args).items() if k not in NOT_CONFIG}
    return {"run_dir": Path(out) / f"{name}_rows", "resume": bool(getattr(args, "resume", False)), "config": config}
