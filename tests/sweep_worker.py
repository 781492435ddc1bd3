"""A tiny-model sweep into a run directory, slow enough to be killed mid-run.

    python tests/sweep_worker.py RUN_DIR [SLEEP_PER_CHUNK] [--resume]

Used by ``tests/test_store.py``: the test starts this script, waits until some
(not all) rows are on disk, kills it with SIGKILL, and resumes. :func:`build`
is shared with the test so both sides use the same rows and config.
"""

from __future__ import annotations

import sys
import time

PROMPTS = ["Alexander the Great", "Pink Floyd", "Star Wars"]
LAYERS = [0, 1, 2, 3]
ALPHAS = [1.0, 3.0, 6.0, 9.0]
RUN_KWARGS = dict(max_new_tokens=3, max_batch_size=4)  # 48 rows -> 12 chunks


def build():
    """``(model, rows, config)`` of the sweep: 3 prompts x 4 layers x 4 alphas = 48 rows."""
    from superscopes_nn.engine.rows import sweep_rows
    from superscopes_nn.core.specs import ENTITY_PROMPT, Target
    from superscopes_nn.testing.tiny_models import tiny_model

    model = tiny_model("llama", seed=0)
    rows = sweep_rows(model, PROMPTS, layers=LAYERS, alphas=ALPHAS, target=Target(ENTITY_PROMPT))
    config = {"model": "tiny-llama-seed0", "prompts": PROMPTS, "sites": ["residual"], "layers": LAYERS,
              "alphas": ALPHAS, "target_prompt": ENTITY_PROMPT, "target_layers": None, **RUN_KWARGS}
    return model, rows, config


def main(argv: list[str]) -> int:
    from superscopes_nn.engine.run import run_rows

    run_dir = argv[0]
    pause = float(argv[1]) if len(argv) > 1 else 0.0
    model, rows, config = build()
    run_rows(model, rows, run_dir=run_dir, config=config, resume="--resume" in argv,
              on_chunk=lambda records: time.sleep(pause), **RUN_KWARGS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
