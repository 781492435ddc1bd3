"""With CI=true a skipped browser test fails the run (and says why); other skips stay skips."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROBE = '''
import pytest


@pytest.mark.browser
def test_browser_missing():
    pytest.skip("chromium not found")


def test_ordinary_skip():
    pytest.skip("not relevant here")
'''


def run_probe(tmp_path, ci: str | None):
    d = tmp_path / ("ci" if ci else "local")
    d.mkdir()
    shutil.copy(HERE / "conftest.py", d / "conftest.py")
    (d / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "-c", os.devnull,
                           "--rootdir", str(d), str(d)], capture_output=True, text=True, env=env, timeout=120, cwd=d)


def test_ci_turns_required_skips_into_failures(tmp_path):
    r = run_probe(tmp_path, "true")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 failed, 1 skipped" in r.stdout, r.stdout
    assert "CI=true: test_probe.py::test_browser_missing skipped (chromium not found)" in r.stdout, r.stdout


def test_without_ci_they_stay_skips(tmp_path):
    r = run_probe(tmp_path, None)
    assert r.returncode == 0 and "2 skipped" in r.stdout, r.stdout + r.stderr
