#!/usr/bin/env bash
# Refresh the locks (locks/superscopes.txt, locks/ndif-tier.txt) to the newest versions the registry
# serves within pyproject.toml's ranges -- only if the whole suite is green on them.
#
#   bash scripts/lock.sh            # ~25 min on 2 cores: fresh unlocked venvs in a scratch clone, the suite, the locks
#
# Run it when you want a newer stack (a new transformers release, a security fix), then commit the
# two lock files and add the versions to docs/versions.md. It works in a scratch clone of HEAD
# (so your .venv is untouched), installs with SUPERSCOPES_UNLOCKED=1, runs the README's test
# command there and, if it passes, writes the frozen versions of both venvs here. If it fails,
# the locks stay as they are and the scratch clone is kept for you to look at.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/superscopes-lock.XXXXXX")
git clone -q "$ROOT" "$SCRATCH/repo"
cd "$SCRATCH/repo"
echo "[lock] scratch clone: $SCRATCH/repo" >&2
export SUPERSCOPES_UNLOCKED=1
bash scripts/setup.sh test
bash scripts/install_browser.sh .venv
test_cmd=$(grep -m1 '^bash scripts/setup.sh test && ' README.md | sed 's/ *#.*$//')
echo "[lock] $test_cmd" >&2
if ! eval "$test_cmd"; then
  echo "[lock] the suite is not green on the newest versions: locks unchanged (scratch clone kept: $SCRATCH/repo)" >&2
  exit 1
fi
freeze() {  # the venv's exact versions (setuptools too: torch requires it; pip itself not); torch's local
            # label (+cpu) dropped so the pin matches any build of it
  "$1/bin/python" -m pip --disable-pip-version-check freeze --all --exclude-editable | grep -v '^pip==' \
    | sed -E 's/^(torch==[0-9.]+)\+[a-z0-9]+$/\1/'
}
stamp="$(date -u +%F), $(.venv/bin/python -V), $(uname -m)"
{ echo "# The exact versions the suite was last green on ($stamp; CPU torch)."
  echo "# Used as pip constraints by scripts/setup.sh (demo and test purposes) and scripts/install_browser.sh."
  echo "# Refresh: bash scripts/lock.sh (installs the newest versions, runs the suite, rewrites this file only if green)."
  freeze .venv; } >"$ROOT/locks/superscopes.txt"
{ echo "# The exact versions of the ndif_server test tier (.venv-ndif: ndif 0.1.2's execution code), last green ($stamp)."
  echo "# Used as pip constraints by scripts/setup_ndif.sh. Refresh: bash scripts/lock.sh."
  freeze .venv-ndif; } >"$ROOT/locks/ndif-tier.txt"
echo "[lock] green: wrote locks/superscopes.txt and locks/ndif-tier.txt ($(grep -E '^(transformers|nnsight|torch)==' "$ROOT/locks/superscopes.txt" | tr '\n' ' '))" >&2
rm -rf "$SCRATCH"
