#!/usr/bin/env bash
# Set up and run the main job offline: `xbarlab demo`, the whole hardware-in-the-loop loop on the
# simulated chip with the bundled digits data. Extra arguments go to `xbarlab demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/xbarlab demo "$@"
