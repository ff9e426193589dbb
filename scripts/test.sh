#!/usr/bin/env bash
# Set up and run the checks: ruff (lint and format) and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# badcrossbar (MIT) is a test-time oracle for the circuit solver; its plotting extra needs pycairo,
# which does not build everywhere, so it is installed without dependencies.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps badcrossbar sigfig pathvalidate
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
