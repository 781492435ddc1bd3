#!/usr/bin/env bash
# Idempotent, cached set-up of the interpreter the `ndif_server` test tier runs NDIF's own
# server code in (ndif==0.1.2, nnsight 0.8.1, a CPU-usable torch). It never contains
# superscopes_nn: the tier's runner must not be able to import the library.
#
#   bash scripts/setup_ndif.sh              # Python 3.11 leg (CI): .venv-ndif, ~1.5 min cold, seconds warm
#   NDIF_PY=3.12 bash scripts/setup_ndif.sh # Python 3.12 leg (NDIF's own floor): .venv-ndif312, heavy, see docs/ndif.md
#
# ndif 0.1.2 declares Requires-Python >=3.12 but its execution path (trusted and sandbox)
# runs on 3.11; the 3.11 leg installs it with --ignore-requires-python. For 3.12 no CPU torch
# is on disk or on PyPI: PyPI's Linux wheel is a CUDA build (~2.6 GB download, ~5 GB
# installed), so that leg is opt-in. Versions are pinned here and by locks/ndif-tier.txt; NDIF_TRANSFORMERS overrides
# the transformers version, which defaults to the client's (.venv) so both build the same tree.
# Prints the venv's python path on stdout (last line).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${NDIF_PY:-3.11}
VENV=${NDIF_VENV:-$([ "$PYV" = 3.11 ] && echo .venv-ndif || echo ".venv-ndif${PYV/./}")}
NDIF_VERSION=0.1.2
NNSIGHT_VERSION=0.8.1
TORCH_VERSION=2.13.0
if [ -z "${NDIF_TRANSFORMERS:-}" ] && [ -x .venv/bin/python ]; then
  NDIF_TRANSFORMERS=$(.venv/bin/python -c "import transformers; print(transformers.__version__)" 2>/dev/null || true)
fi
TF=${NDIF_TRANSFORMERS:-5.24.0}
# Every other package at the version in locks/ndif-tier.txt, unless SUPERSCOPES_UNLOCKED=1 (newest) or
# the client runs another transformers than the lock's (then only the pins above hold).
LOCK=locks/ndif-tier.txt
CONSTRAIN=()
if [ -z "${SUPERSCOPES_UNLOCKED:-}" ] && grep -qx "transformers==$TF" "$LOCK"; then
  CONSTRAIN=(-c "$LOCK"); LOCKED="lock=$(cksum <"$LOCK" | cut -d' ' -f1)"
else
  LOCKED="lock=none"
fi
WANT="ndif=$NDIF_VERSION nnsight=$NNSIGHT_VERSION torch=$TORCH_VERSION transformers=$TF python=$PYV $LOCKED"
stamp="$VENV/.ndif-tier"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$WANT" ] && "$VENV/bin/python" -c "import ndif, torch" 2>/dev/null; then
  echo "[setup_ndif] cached: $WANT" >&2
  echo "$PWD/$VENV/bin/python"
  exit 0
fi

find_python() {  # a pyenv shim on PATH may exist and still refuse to run: try each candidate
  for p in "$(command -v "python$PYV" 2>/dev/null || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$PYV".*/bin/python; do
    [ -n "$p" ] && [ -x "$p" ] && "$p" -c "import venv" 2>/dev/null && { echo "$p"; return; }
  done
  echo "[setup_ndif] no python$PYV found (PATH or pyenv); set NDIF_PY to an installed version" >&2
  exit 1
}
PY=$(find_python)
t0=$(date +%s)
echo "[setup_ndif] building $VENV with $PY: $WANT" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
log="$VENV/setup.log"
{
  # torch first, alone: 3.11 takes the CPU wheel on this machine's disk; 3.12 gets PyPI's build.
  $PIP install "${CONSTRAIN[@]}" "torch==$TORCH_VERSION"
  # What ndif's execution path imports (ndif[ray] minus ray/peft/boto3/redis, which it does not touch there).
  $PIP install "${CONSTRAIN[@]}" "nnsight==$NNSIGHT_VERSION" "transformers==$TF" accelerate zstandard numpy pydantic click \
    python-dotenv pyyaml
  if [ "$PYV" = 3.11 ]; then
    $PIP install --no-deps --ignore-requires-python "ndif==$NDIF_VERSION"
  else
    $PIP install --no-deps "ndif==$NDIF_VERSION"
  fi
} >"$log" 2>&1 || { tail -40 "$log" >&2; echo "[setup_ndif] install failed, full log: $log" >&2; exit 1; }
if "$VENV/bin/python" -I -c "import superscopes_nn" 2>/dev/null; then
  echo "[setup_ndif] $VENV can import superscopes_nn; it must not" >&2
  exit 1
fi
"$VENV/bin/python" -c "import ndif.services.ray.deployments.modeling.nns, ndif.services.ray.sandbox.host" \
  || { echo "[setup_ndif] ndif's execution path does not import in $VENV" >&2; exit 1; }
echo "$WANT" >"$stamp"
echo "[setup_ndif] built $VENV in $(( $(date +%s) - t0 )) s, $(du -sh "$VENV" | cut -f1)" >&2
echo "$PWD/$VENV/bin/python"
