#!/usr/bin/env bash
# Run every benchmark, one after the other; results go to bench/results/ (JSON + markdown).
# Each bench starts what it needs itself (appliance, nginx, Orthanc) on free 127.0.0.1
# ports in a temporary directory, and removes it afterwards.
#
#   bash bench/run_all.sh              # 300 slices, as the issues ask
#   SLICES=40 bash bench/run_all.sh    # a quick look
#   PYTHON=/path/to/venv/bin/python bash bench/run_all.sh
#   RESULTS=/tmp/results bash bench/run_all.sh   # somewhere else than bench/results
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SLICES="${SLICES:-300}"
RESULTS="${RESULTS:-bench/results}"
mkdir -p "$RESULTS"
for tool in wrk ojph_compress /usr/bin/storescu /usr/sbin/nginx /usr/sbin/Orthanc; do
  command -v "$tool" >/dev/null || {
    echo "missing $tool: apt-get install wrk openjph-tools dcmtk nginx-light orthanc" >&2
    exit 1
  }
done

echo "==> codec: per-frame HTJ2K cost and size vs bare encoders"
"$PYTHON" bench/codec.py --slices "$SLICES" --out "$RESULTS/codec.json"
echo "==> ingest: storescu into the appliance vs into Orthanc's own C-STORE server"
"$PYTHON" bench/ingest.py --slices "$SLICES" --codec-json "$RESULTS/codec.json" \
  --out "$RESULTS/ingest.json"
echo "==> frames: X-Accel-Redirect with auth vs static nginx vs a Python proxy"
"$PYTHON" bench/frames.py --slices "$SLICES" --out "$RESULTS/frames.json"
if [ -f bench/viewer.py ]; then
  echo "==> viewer: OHIF first image and all frames, HTJ2K vs uncompressed"
  "$PYTHON" bench/viewer.py --slices "$SLICES" --out "$RESULTS/viewer.json"
fi
echo "==> packaging: bundle, tarball and .deb sizes, build time, first start from the bundle"
"$PYTHON" bench/packaging.py --out "$RESULTS/packaging.json"
echo "==> done: $RESULTS/"
