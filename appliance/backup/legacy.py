"""Unencrypted repositories (format 1, before backups were encrypted): read, never written.

``DEST/objects/ab/<SHA-256>`` holds each content in the clear; ``DEST/snapshots/<name>.json``
each manifest, signed with the backup key since snapshots were signed (an ``mac``), not
before. Restore and verify still read them; :mod:`appliance.backup.migrate` encrypts them
into the repository's encrypted folders and then removes them.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, BinaryIO

from appliance.backup.errors import BackupError
from appliance.backup.files import ObjectReader, open_plain, read_limited
from appliance.backup.manifest import MAX_MANIFEST_BYTES, parse, signed

CHUNK = 1 << 20


class LegacyRepository(ObjectReader):
    """The unencrypted objects and manifests of a format 1 repository in ``root``."""

    encrypted = False

    def __init__(self, root: Path, key: bytes | None = None) -> None:
        """``key``: the backup key that checks the signed manifests read."""
        self.root = root
        self.key = key
        self.objects = root / "objects"
        self.snapshots = root / "snapshots"

    def unlock(self) -> None:
        """Nothing to unwrap: an unencrypted repository is read as it is."""

    def snapshot_names(self) -> list[str]:
        """Names of the snapshots, oldest first."""
        if not self.snapshots.is_dir():
            return []
        return sorted(p.stem for p in self.snapshots.glob("*.json"))

    def latest(self) -> dict[str, Any] | None:
        """The newest snapshot's manifest, or None if there is none."""
        names = self.snapshot_names()
        return self.manifest(names[-1]) if names else None

    def manifest(self, name: str) -> dict[str, Any]:
        """One snapshot's manifest, validated and, if signed and given the key, authenticated."""
        raw = read_limited(self.snapshots / f"{name}.json", MAX_MANIFEST_BYTES, f"snapshot {name}")
        return parse(raw, name, self.key)

    def trusted(self, manifest: dict[str, Any]) -> bool:
        """Whether the manifest shows it was not changed (signed; checked if a key was given)."""
        return signed(manifest)

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.object_path(sha256).is_file()

    def stored_size(self, size: int) -> int:
        return size  # in the clear

    def copy_to(self, sha256: str, dst: BinaryIO | None) -> None:
        """Read an object (into ``dst``, if any); :class:`BackupError` if damaged."""
        path = self.object_path(sha256)
        digest = hashlib.sha256()
        try:
            with open_plain(path) as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    if dst is not None:
                        dst.write(chunk)
        except OSError as exc:
            raise BackupError(f"{path}: cannot read it ({exc.strerror})") from None
        if digest.hexdigest() != sha256:
            raise BackupError(f"{path}: checksum mismatch (the object is damaged or altered)")

    def remove(self) -> None:
        """Delete the unencrypted manifests, then the objects (once all are migrated)."""
        for name in self.snapshot_names():
            (self.snapshots / f"{name}.json").unlink()
        shutil.rmtree(self.objects, ignore_errors=True)
        shutil.rmtree(self.snapshots, ignore_errors=True)
