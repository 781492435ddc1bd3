#!/usr/bin/env bash
# Install what the browser tests (pytest -m browser) need, without touching
# playwright's own browser download (it needs the internet):
#   * Debian's chromium at /usr/bin/chromium (apt), if missing;
#   * the `playwright` Python package into the venv given as $1 (default: the repo's .venv), if missing.
# Idempotent. Outside CI, exits 0 with a message when apt is not usable (non-root,
# non-Debian) or the venv is missing: the browser tests then skip. With CI=true every
# such case is an error (exit 1): in CI the browser tests must run, and a skip of
# theirs fails the run (tests/conftest.py).
#
# usage: scripts/install_browser.sh [VENV_DIR]
# env:   SUPERSCOPES_CHROMIUM (default /usr/bin/chromium), CI
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"
CHROMIUM="${SUPERSCOPES_CHROMIUM:-/usr/bin/chromium}"
case "${CI:-}" in 1|true|TRUE|True|yes) IN_CI=1 ;; *) IN_CI=0 ;; esac

# cannot_install WHAT WHY: outside CI say so and go on (the tests will skip); in CI stop.
cannot_install() {
    if [ "$IN_CI" = 1 ]; then
        echo "[install_browser] error: cannot install $1: $2 (CI=true: the browser tests must run)" >&2
        exit 1
    fi
    echo "$1: $2; skipping (browser tests will be skipped)"
}

# --- chromium -------------------------------------------------------------
if [ -x "$CHROMIUM" ]; then
    echo "chromium: already installed ($CHROMIUM)"
elif ! command -v apt-get >/dev/null 2>&1; then
    cannot_install chromium "apt-get not available"
elif [ "$(id -u)" -ne 0 ]; then
    cannot_install chromium "not root, cannot apt-get install"
else
    echo "chromium: installing from Debian (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq chromium; }; then
        cannot_install chromium "apt-get install chromium failed"
    elif [ ! -x "$CHROMIUM" ]; then
        cannot_install chromium "apt-get installed chromium but $CHROMIUM is not there"
    fi
fi

# --- playwright (Python package only) ---------------------------------------
if [ ! -x "$PY" ]; then
    cannot_install playwright "no python at $PY (pass the venv dir as \$1)"
    exit 0
fi
if "$PY" -c "import playwright" >/dev/null 2>&1; then
    echo "playwright: already installed in $VENV"
else
    echo "playwright: installing into $VENV (no browser download)"
    # Never run `playwright install`: the tests use the system chromium.
    # at the locked version (locks/superscopes.txt) unless SUPERSCOPES_UNLOCKED=1
    LOCK=(-c "$ROOT/locks/superscopes.txt"); [ -n "${SUPERSCOPES_UNLOCKED:-}" ] && LOCK=()
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PY" -m pip install -q "${LOCK[@]}" playwright \
        || cannot_install playwright "pip install playwright failed"
fi

echo "done"
exit 0
