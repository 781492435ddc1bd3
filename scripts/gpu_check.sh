#!/usr/bin/env bash
# The GPU check of issue 21 (benchmarks/gpu_check.py) on a lent GPU, in one command.
#
# The GPU image holds torch (CUDA), transformers, accelerate, tokenizers, safetensors, pandas,
# pyarrow and pytest, but not nnsight and a few of its needs: those travel as wheels in .whl/.
# Once, here (a machine with the package index), in the repo root:
#     bash scripts/gpu_check.sh --download          (.whl/ is in .gitignore)
# then on the GPU machine (device tool): run(command="bash scripts/gpu_check.sh", carry=[".whl"],
# timeout_s=600). The JSON summary is printed and written to $OUT/gpu_check.json.
# Extra arguments go to gpu_check.py (e.g. --skip engine_tests). On a CPU: PYTHON=.venv/bin/python
# bash scripts/gpu_check.sh --cpu-smoke (tiny shapes; what tests/test_devices.py runs).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="nnsight==0.8.1 greenlet==3.5.6 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 websocket-client==1.9.2 zstandard==0.25.0"
if [ "${1:-}" = "--download" ]; then
  PY=${PYTHON:-python3}
  plats=""
  for n in 2_28 2_27 2_17 2014 1; do
    case $n in 2014|1) plats="$plats --platform manylinux${n}_x86_64" ;; *) plats="$plats --platform manylinux_${n}_x86_64" ;; esac
  done
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plats -d .whl $WHEELS
  ls -l .whl
  exit 0
fi
if [ "${1:-}" != "--cpu-smoke" ] && ls .whl/*.whl >/dev/null 2>&1; then  # cp312 wheels, for the GPU image
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" benchmarks/gpu_check.py --json "${OUT:-/tmp}/gpu_check.json" "$@"
