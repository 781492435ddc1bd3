#!/usr/bin/env bash
# Install what the browser tests (pytest -m browser) need, without touching
# playwright's own browser download (it needs the internet):
#   * Debian's chromium at /usr/bin/chromium (apt), if missing;
#   * the `playwright` Python package into the venv given as $1 (default: the repo's .venv), if missing.
# Idempotent. Exits 0 with a message when apt is not usable (non-root, non-Debian):
# the browser tests then skip.
#
# usage: scripts/install_browser.sh [VENV_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"

# --- chromium -------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
    echo "chromium: already installed (/usr/bin/chromium)"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: apt-get not available; skipping (browser tests will be skipped)"
elif [ "$(id -u)" -ne 0 ]; then
    echo "chromium: not root, cannot apt-get install; skipping (browser tests will be skipped)"
else
    echo "chromium: installing from Debian (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium
fi

# --- playwright (Python package only) ---------------------------------------
if [ ! -x "$PY" ]; then
    echo "playwright: no python at $PY; skipping (pass the venv dir as \$1)"
    exit 0
fi
if "$PY" -c "import playwright" >/dev/null 2>&1; then
    echo "playwright: already installed in $VENV"
else
    echo "playwright: installing into $VENV (no browser download)"
    # Never run `playwright install`: the tests use /usr/bin/chromium.
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q playwright
fi

echo "done"
exit 0
