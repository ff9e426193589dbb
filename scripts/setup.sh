#!/usr/bin/env bash
# Create .venv in the repository (if missing) and install xbarlab with pinned dependencies.
# Usage: bash scripts/setup.sh [EXTRA]   (EXTRA: "test" adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
target="."
if [ -n "${1:-}" ]; then
  target=".[$1]"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
