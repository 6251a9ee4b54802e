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
# Two workers, one test module each at a time (module fixtures stay whole): most of the
# suite waits on real services, so two cores run it in about half the time. The slowest
# steps are printed so that where the time goes stays visible.
exec .venv/bin/python -m pytest -n 2 --dist loadfile --durations=15 "$@"
