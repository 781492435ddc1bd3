"""pyflakes (a dev dependency, installed by ``scripts/setup.sh test``) is clean over the library, the
experiments and the tests: no unused import, undefined name or shadowed definition. An intentional
re-export is listed in its module's ``__all__`` (pyflakes ignores ``# noqa``)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyflakes_is_clean():
    r = subprocess.run([sys.executable, "-m", "pyflakes", "superscopes_nn", "experiments", "tests"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "No module named pyflakes" not in r.stderr, "pyflakes missing: bash scripts/setup.sh test (the dev extra)"
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr
