#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run the whole suite
# (unit tests, the real appliance end to end, browser and packaging tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check .
echo "==> Architecture contracts (import-linter)"
.venv/bin/lint-imports --no-cache
echo "==> Front-end unit tests (Vitest)"
(cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm test --silent)
echo "==> Python tests (unit, end to end with the real services, browser)"
# One worker: with two, the container, packaging and browser tests on both workers at
# once loaded the 2 cores enough to make a few timing-bound tests fail on most clean-clone
# runs (about 13 min then; about twice that now). Pass -n 2 to trade that for speed. The
# slowest steps are printed so that where the time goes stays visible.
exec .venv/bin/python -m pytest -n 1 --dist loadfile --durations=15 "$@"
