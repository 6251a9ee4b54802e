#!/usr/bin/env bash
# Build the bundle, dist/neuronova-VERSION-linux-x86_64.tar.gz and dist/neuronova_VERSION_amd64.deb
# from a set-up checkout (bash scripts/setup.sh --test). Options: packaging/build.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "Error: no .venv in $(pwd): run bash scripts/setup.sh --test first" >&2
  exit 1
fi
exec .venv/bin/python packaging/build.py "$@"
