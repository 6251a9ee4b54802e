#!/usr/bin/env bash
# A workflow job's first script in a bare debian:12 container (.github/workflows/*.yml).
# The job checks out twice: first without git (actions/checkout then downloads the files),
# to reach this script; this installs git, and trusts the checkout although the runner,
# not root, owns it; the second checkout is then a git clone with every tag, which the
# version needs (appliance/version.py). scripts/setup.sh installs everything else.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends git ca-certificates
git config --global --add safe.directory '*'
