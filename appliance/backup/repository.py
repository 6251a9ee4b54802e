"""A backup repository: files stored once by SHA-256, and one manifest per snapshot.

``DEST/objects/ab/abcdef...`` holds each distinct content once (a second backup writes
only contents it does not hold yet); ``DEST/snapshots/<UTC time>.json`` lists, for one
snapshot, every path with its checksum. The repository is as sensitive as the home it
copies (it holds the secrets): folders 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from appliance.backup.errors import BackupError
from appliance.backup.manifest import MAX_MANIFEST_BYTES, parse, sign
from appliance.security.keys import write_private_file

CHUNK = 1 << 20
SNAPSHOT_NAME = "%Y%m%dT%H%M%S%fZ"  # a snapshot's name: the UTC time it was taken
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # never a link, never a FIFO's wait

__all__ = ["BackupError", "Repository", "RepositoryBusy", "Stored", "create_inside"]


class RepositoryBusy(BackupError):
    """Another backup, prune or push holds the repository's lock."""


@dataclass(frozen=True)
class Stored:
    """One file put into the repository."""

    sha256: str
    size: int
    copied: int  # bytes written to the repository (0 when the content was there)


class Repository:
    """The objects and snapshot manifests under one destination folder."""

    def __init__(self, root: Path, key: bytes | None = None) -> None:
        """``key``: the backup key that signs the manifests saved and checks those read."""
        self.root = root
        self.key = key
        self.objects = root / "objects"
        self.snapshots = root / "snapshots"

    def create(self) -> None:
        """Make the folders (0700), refusing a folder that is something else."""
        if self.root.exists() and any(self.root.iterdir()) and not self.snapshots.is_dir():
            raise BackupError(
                f"{self.root} is not empty and holds no NeuroNova backup. "
                "Choose an empty folder or an earlier backup's folder."
            )
        for folder in (self.root, self.objects, self.snapshots):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``DEST/lock`` exclusively: one backup, prune or push at a time.

        A prune beside a running backup would delete the objects that backup has put
        but no manifest names yet.
        """
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RepositoryBusy(
                    f"another backup, prune or push is using {self.root}; "
                    "wait for it to finish and run this again."
                ) from None
            yield
        finally:
            os.close(fd)

    def object_names(self) -> Iterator[str]:
        """The SHA-256 of every object stored (not the leftovers of an interrupted put)."""
        for folder in sorted(self.objects.glob("??")):
            yield from (p.name for p in folder.iterdir() if not p.name.startswith("."))

    def remove_object(self, sha256: str) -> int:
        """Delete one object; returns the bytes freed."""
        path = self.object_path(sha256)
        size = path.stat().st_size
        path.unlink()
        return size

    def remove_snapshot(self, name: str) -> None:
        """Delete one snapshot's manifest (its objects stay until pruned)."""
        (self.snapshots / f"{name}.json").unlink()

    def remove_leftovers(self) -> None:
        """Delete what interrupted backups left in ``objects/`` (call under :meth:`locked`)."""
        for path in self.objects.glob(".incoming-*"):
            path.unlink()
        for path in self.objects.glob("tmp*"):
            shutil.rmtree(path, ignore_errors=True)

    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.object_path(sha256).is_file()

    def put(self, source: Path) -> Stored:
        """Copy ``source`` in, hashing as it goes; the content is kept once."""
        with open(source, "rb") as src, tempfile.NamedTemporaryFile(
            dir=self.objects, prefix=".incoming-", delete=False
        ) as tmp:
            digest, size = hashlib.sha256(), 0
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                tmp.write(chunk)
                size += len(chunk)
            tmp.flush()
            os.fsync(tmp.fileno())
        sha256 = digest.hexdigest()
        target = self.object_path(sha256)
        if target.exists():
            os.unlink(tmp.name)
            return Stored(sha256, size, 0)
        target.parent.mkdir(mode=0o700, exist_ok=True)
        os.chmod(tmp.name, 0o600)
        os.replace(tmp.name, target)
        return Stored(sha256, size, size)

    def problem(self, sha256: str, size: int) -> str | None:
        """None if the object is a plain file of ``size`` bytes; otherwise what is wrong."""
        path = self.object_path(sha256)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return f"{path}: missing"
        if not stat.S_ISREG(info.st_mode):
            return f"{path}: not a plain file"
        if info.st_size != size:
            return f"{path}: {info.st_size} bytes, the manifest says {size}"
        return None

    def check(self, sha256: str, size: int) -> str | None:
        """:meth:`problem`, or a checksum mismatch; None if the object is whole."""
        if problem := self.problem(sha256, size):
            return problem
        try:
            self._copy(sha256, None)
        except BackupError as exc:
            return str(exc)
        return None

    def copy_out(self, sha256: str, home: Path, rel: str, mode: int) -> None:
        """Write an object's content to ``home/rel`` (a new file, with ``mode``).

        No symbolic link is followed below ``home``; a content not matching ``sha256``
        raises :class:`BackupError` (the part written stays for the caller to remove).
        """
        with open(create_inside(home, rel, mode), "wb") as dst:
            os.fchmod(dst.fileno(), mode)  # the mode as saved, whatever the umask
            self._copy(sha256, dst)

    def read(self, sha256: str) -> bytes:
        """An object's content, checked against its SHA-256."""
        buffer = io.BytesIO()
        self._copy(sha256, buffer)
        return buffer.getvalue()

    def _copy(self, sha256: str, dst: BinaryIO | None) -> None:
        """Read an object (into ``dst``, if any); raise :class:`BackupError` if damaged."""
        path = self.object_path(sha256)
        digest = hashlib.sha256()
        try:
            with open(os.open(path, READ_FLAGS), "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    if dst is not None:
                        dst.write(chunk)
        except OSError as exc:
            raise BackupError(f"{path}: cannot read it ({exc.strerror})") from None
        if digest.hexdigest() != sha256:
            raise BackupError(f"{path}: checksum mismatch (the object is damaged or altered)")

    def snapshot_names(self) -> list[str]:
        """Names of the snapshots, oldest first."""
        if not self.snapshots.is_dir():
            return []
        return sorted(p.stem for p in self.snapshots.glob("*.json"))

    def latest(self) -> dict[str, Any] | None:
        """The newest snapshot's manifest, or None for a new repository."""
        names = self.snapshot_names()
        return self.manifest(names[-1]) if names else None

    def manifest(self, name: str) -> dict[str, Any]:
        """One snapshot's manifest, validated (:func:`appliance.backup.manifest.parse`) and,
        if signed and the repository has a key, authenticated with it."""
        path = self.snapshots / f"{name}.json"
        try:
            with open(os.open(path, READ_FLAGS), "rb") as src:
                if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                    raise BackupError(f"snapshot {name}: {path} is not a plain file")
                raw = src.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            raise BackupError(f"cannot read snapshot {name} in {self.root}: {exc}") from exc
        return parse(raw, name, self.key)

    def save(self, name: str, manifest: dict[str, Any]) -> None:
        """Write a snapshot's manifest last, so a snapshot exists only once complete.

        It is signed with the repository's key, if it has one.
        """
        raw = json.dumps(manifest if self.key is None else sign(manifest, self.key)).encode()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BackupError(
                f"snapshot {name}: its manifest would be {len(raw)} bytes, more than a "
                f"restore reads ({MAX_MANIFEST_BYTES}); no snapshot was written."
            )
        write_private_file(self.snapshots / f"{name}.json", raw)


def create_inside(home: Path, rel: str, mode: int) -> int:
    """Create the new file ``home/rel`` (and its folders), never through a symbolic link.

    Each folder below ``home`` is opened with ``O_NOFOLLOW``, so a link planted anywhere
    on the way fails the call instead of leading out of ``home``. Returns the open fd.
    """
    *folders, name = rel.split("/")
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, dir_fd=fd)
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        return os.open(name, flags, mode, dir_fd=fd)
    finally:
        os.close(fd)
