#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite
# (unit tests, the real appliance end to end, browser and packaging tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
