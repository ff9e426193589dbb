#!/usr/bin/env bash
# Set up and run the main job offline: `xbarlab train` on the bundled digits data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/xbarlab train "$@"
