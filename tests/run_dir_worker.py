"""The 48-row sweep of ``sweep_worker`` in a process that dies (SIGKILL) at a chosen point.

    python tests/run_dir_worker.py RUN_DIR POINT [--resume] [--gate FILE]

POINT is where the process kills itself with SIGKILL:

- ``none``: never (a plain writer; with ``--gate FILE`` it waits after its first chunk
  until FILE exists, holding the run directory, so a test can start a second writer);
- ``before-rows``: config.json written, no row yet;
- ``before-fsync``: the third chunk's rows written but not fsynced;
- ``torn-append``: half of the third chunk's bytes written (a kill mid-``write``);
- ``csv-before-rename``: ``.results.csv.tmp`` complete, not yet renamed;
- ``parquet-mid-write``: ``results.csv`` in place, half a ``.results.parquet.tmp`` written.

Used by ``tests/test_run_dir_faults.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

POINTS = ("none", "before-rows", "before-fsync", "torn-append", "csv-before-rename", "parquet-mid-write")


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    """Patch the run store so this process kills itself at ``point``."""
    import pandas as pd

    from superscopes_nn.core import store

    calls = {"append": 0}
    real_append, real_fsync, real_replace = store.RunStore.append, os.fsync, os.replace

    def append(self, records):
        calls["append"] += 1
        if point == "before-rows":
            die()
        if calls["append"] == 3 and point == "torn-append":
            import json

            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
            with open(self.rows_path, "ab") as f:
                f.write(text[: len(text) // 2])
            die()
        if calls["append"] == 3 and point == "before-fsync":
            store.os.fsync = lambda fd: die()
        return real_append(self, records)

    def replace(src, dst):
        if point == "csv-before-rename" and Path(dst).name == "results.csv":
            die()
        return real_replace(src, dst)

    def to_parquet(df, path, **kw):
        Path(path).write_bytes(b"PAR1" + b"\0" * 64)  # half a file
        die()

    store.RunStore.append = append
    store.os.replace = replace
    if point == "parquet-mid-write":
        pd.DataFrame.to_parquet = to_parquet
    del real_fsync


def main(argv: list[str]) -> int:
    import sweep_worker
    from superscopes_nn.engine.run import run_rows

    run_dir, point = argv[0], argv[1]
    assert point in POINTS, point
    gate = Path(argv[argv.index("--gate") + 1]) if "--gate" in argv else None
    model, rows, config = sweep_worker.build()
    arm(point)

    def on_chunk(records):
        deadline = time.monotonic() + 120
        while gate is not None and not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    run_rows(model, rows, run_dir=run_dir, config=config, resume="--resume" in argv, on_chunk=on_chunk, **sweep_worker.RUN_KWARGS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
