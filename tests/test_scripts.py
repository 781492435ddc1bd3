"""scripts/setup.sh: when torch cannot be installed it stops with one clear message, and never
falls back to an index this machine cannot reach (download.pytorch.org)."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PY = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls.log"
case "$*" in
  *"import torch"*) exit 1 ;;
  *"pip"*"install"*) echo "ERROR: No matching distribution found for torch" >&2; exit 1 ;;
esac
exit 0
"""


def test_setup_fails_clearly_without_fallback_index(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    py = bin_ / "python"
    py.write_text(FAKE_PY)
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHON": "false"})
    calls = (bin_ / "calls.log").read_text()
    assert r.returncode != 0, r.stderr
    assert "download.pytorch.org" not in calls and "--index-url" not in calls, calls
    assert "install torch==2.13.0" in calls, calls
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("[setup] error:") and "torch==2.13.0" in last, r.stderr
