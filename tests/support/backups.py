"""What the backup tests share: the CLI without a running appliance, the secrets a backup
must never show in the clear, and a repository as it was written before encryption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.backup.legacy import LegacyRepository
from appliance.backup.manifest import SECTIONS, sign
from appliance.backup.repository import Repository
from appliance.layout import HomeLayout


def neuronova(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m appliance ARGS`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip


def clear_texts(home: Path) -> dict[str, bytes]:
    """What a backup of ``home`` must never show in the clear: a DICOM file (the preamble's
    end and the magic; 'DICM' alone turns up by chance once in ~4e9 random bytes), the
    synthetic patient's name and ID, the JWT key, Orthanc's password and the TLS key."""
    layout = HomeLayout(home)
    tls_keys = [p for p in layout.tls_dir.glob("*key*") if p.is_file()]
    assert tls_keys, f"no TLS key in {layout.tls_dir}"
    texts = {"DICOM preamble and magic": bytes(16) + b"DICM", "patient name": b"BENCH^PHANTOM",
             "patient ID": b"NNBENCH0001",
             "JWT key": layout.jwt_key_file.read_bytes().strip(),
             "Orthanc password": layout.orthanc_password_file.read_bytes().strip()}  # fmt: skip
    for path in tls_keys:
        body = path.read_bytes().splitlines()[1]  # a line of the PEM's base64, past its header
        texts[f"TLS key {path.name}"] = body
    return texts


def shown_in_clear(root: Path, texts: dict[str, bytes]) -> list[str]:
    """Which of ``texts`` some file below ``root`` holds (empty: none), as 'what in path'."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        data = path.read_bytes()
        found += [f"{what} in {path}" for what, text in texts.items() if text in data]
    return found


def unencrypted_copy(repo: Repository, dest: Path, key: bytes | None) -> LegacyRepository:
    """``repo``'s snapshots written into ``dest`` as a repository from before encryption
    wrote them (format 1, objects in the clear, manifests signed with ``key``, or unsigned
    as before snapshots were signed if None)."""
    legacy = LegacyRepository(dest, key)
    for name in repo.snapshot_names():
        joined = repo.manifest(name)  # format 1 manifests were written in one piece
        manifest = {k: v for k, v in joined.items() if k != "parts"} | {"format": 1}
        for section in SECTIONS:
            for entry in manifest[section].values():
                path = legacy.object_path(entry["sha256"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(repo.read(entry["sha256"]))
        legacy.snapshots.mkdir(parents=True, exist_ok=True)
        signed = manifest if key is None else sign(manifest, key)
        (legacy.snapshots / f"{name}.json").write_text(json.dumps(signed))
    return legacy
