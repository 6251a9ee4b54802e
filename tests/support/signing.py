"""Release test helpers: a throw-away GPG signing key, the release script, and a folder
served over loopback HTTP (a static host, as a release's download folder is)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import REPO

RELEASE = REPO / "packaging" / "release.py"


@dataclass(frozen=True)
class SigningKey:
    """A key in a GnuPG home of its own: ``env`` runs gpg (and release.py) with it."""

    home: Path
    fingerprint: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "GNUPGHOME": str(self.home)}

    def armored_secret(self) -> str:
        return subprocess.run(["gpg", "--batch", "--armor", "--export-secret-keys",
                               self.fingerprint], env=self.env, capture_output=True, text=True,
                              check=True).stdout  # fmt: skip


@contextmanager
def throwaway_key(name: str = "NeuroNova Test Release") -> Iterator[SigningKey]:
    """A new ed25519 signing key without passphrase; its home removed afterwards. (The
    home is short-named under /tmp: gpg-agent's socket path must stay under 108 bytes.)"""
    home = Path(tempfile.mkdtemp(prefix="nn-gpg-", dir="/tmp"))
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                        f"{name} <release@example.invalid>", "ed25519", "sign", "never"],
                       env=env, capture_output=True, check=True, timeout=60)  # fmt: skip
        listed = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"],
                                env=env, capture_output=True, text=True, check=True)  # fmt: skip
        fingerprint = next(line.split(":")[9] for line in listed.stdout.splitlines()
                           if line.startswith("fpr:"))  # fmt: skip
        yield SigningKey(home, fingerprint)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def release(*args: str, env: dict[str, str] | None = None,
            timeout: float = 1800) -> subprocess.CompletedProcess:  # fmt: skip
    """Run ``packaging/release.py`` as the release workflow does."""
    return subprocess.run([sys.executable, str(RELEASE), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)  # fmt: skip


def output_values(result: subprocess.CompletedProcess) -> dict[str, str]:
    """The ``name=value`` lines a release step prints (what $GITHUB_OUTPUT gets)."""
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served(folder: Path) -> Iterator[str]:
    """``folder`` served read-only on a free 127.0.0.1 port; its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
