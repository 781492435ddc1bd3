"""Run a resolved sweep into a run directory: config, every finished row, CSV and parquet.

``run_and_store(model, rows, run_dir, config)`` is what the CLI and the
experiment scripts call; rows are appended to ``run_dir/rows.jsonl`` per finished
chunk by :mod:`superscopes_nn.store`, so a crash or Ctrl-C loses nothing and
``resume=True`` continues where the run stopped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def write_tables(df: pd.DataFrame, run_dir: Path) -> None:
    """``results.csv`` and ``results.parquet`` beside the row log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(run_dir / "results.csv", index=False)
    df.to_parquet(run_dir / "results.parquet", index=False)


def run_and_store(model, rows, run_dir, config: dict, *, resume: bool = False, **run_kwargs) -> pd.DataFrame:
    from .store import run_sweep

    run_dir = Path(run_dir)
    df = run_sweep(model, rows, run_dir, config, resume=resume, **run_kwargs)
    write_tables(df, run_dir)
    return df
