"""A backup repository: encrypted objects stored once, and one encrypted manifest per snapshot.

``DEST/repository.json`` holds the repository's keys, wrapped by the home's backup key
(:mod:`appliance.backup.crypto`); ``DEST/data/ab/<name>`` each distinct content once,
encrypted, under a keyed name (a second backup writes only contents it does not hold
yet); ``DEST/manifests/<UTC time>`` each snapshot's manifest (every path with its
content's SHA-256), encrypted. Nothing in ``DEST`` can be read, or changed unnoticed,
without the backup key. Folders 0700, files 0600.

A repository from before backups were encrypted (``objects/``, ``snapshots/``) is read by
:class:`appliance.backup.legacy.LegacyRepository` until it is migrated.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

from appliance.backup.crypto import RepositoryKeys, encrypted_size, manifest_domain
from appliance.backup.errors import BackupError
from appliance.backup.files import ObjectReader, open_plain, read_limited
from appliance.backup.legacy import LegacyRepository
from appliance.backup.manifest import MAX_MANIFEST_BYTES, entries_problem, parse, parse_top
from appliance.backup.parts import Known, Read, part_entries, split
from appliance.durable import fsync_dir, fsync_file
from appliance.security.keys import write_private_file

SNAPSHOT_NAME = "%Y%m%dT%H%M%S%fZ"  # a snapshot's name: the UTC time it was taken
SYNC_EVERY = 2000  # objects put before they are made durable together
SYNC_THREADS = 16
KEY_RECORD = "repository.json"

__all__ = ["BackupError", "Repository", "RepositoryBusy", "Stored", "readable"]


class RepositoryBusy(BackupError):
    """Another backup, prune or push holds the repository's lock."""


@dataclass(frozen=True)
class Stored:
    """One file put into the repository."""

    sha256: str
    size: int
    copied: int  # bytes of content newly stored (0 when the content was there)


class Repository(ObjectReader):
    """The encrypted objects and snapshot manifests under one destination folder."""

    encrypted = True

    def __init__(self, root: Path, key: bytes | None = None) -> None:
        """``key``: the home's backup key; everything but :meth:`locked` needs it."""
        self.root = root
        self.key = key
        self.key_record = root / KEY_RECORD
        self.objects = root / "data"
        self.snapshots = root / "manifests"
        self._unsynced: dict[str, Path] = {}  # put, not yet durable nor named (sync)
        self._known: Known = {}  # parts of the last manifest read (appliance.backup.parts)

    def create(self) -> None:
        """Make the folders (0700) and, for a new repository, its keys; refuse a folder
        that is something else."""
        legacy = LegacyRepository(self.root).snapshots.is_dir()
        ours = self.key_record.is_file() or self.snapshots.is_dir() or legacy
        if self.root.exists() and any(self.root.iterdir()) and not ours:
            raise BackupError(
                f"{self.root} is not empty and holds no NeuroNova backup. "
                "Choose an empty folder or an earlier backup's folder."
            )
        for folder in (self.root, self.objects, self.snapshots):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        if not self.key_record.exists():
            keys, record = RepositoryKeys.new(self._backup_key())
            write_private_file(self.key_record, record)
            self.__dict__["keys"] = keys

    def exists(self) -> bool:
        """Whether ``root`` holds an encrypted repository (its key record)."""
        return self.key_record.is_file()

    @cached_property
    def keys(self) -> RepositoryKeys:
        """The repository's keys, unwrapped with the backup key."""
        record = read_limited(self.key_record, 4096, f"the keys of {self.root}")
        return RepositoryKeys.unwrap(record, self._backup_key(), str(self.root))

    def unlock(self) -> None:
        """Unwrap the keys now: a missing or wrong backup key is refused before any read."""
        _ = self.keys

    def _backup_key(self) -> bytes:
        if self.key is None:
            raise BackupError(f"{self.root} is encrypted: give the backup key of the home that "
                              "took it with --key-file (its HOME/secrets/backup-key).")  # fmt: skip
        return self.key

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``DEST/lock`` exclusively: one backup, prune, push or migration at a time.

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

    # ---------------------------------------------------------------- objects

    def stored_names(self) -> Iterator[str]:
        """The name of every object stored (not the leftovers of an interrupted put)."""
        for folder in sorted(self.objects.glob("??")):
            yield from (p.name for p in folder.iterdir() if not p.name.startswith("."))

    def name_of(self, sha256: str) -> str:
        """The name the object of content ``sha256`` is stored under."""
        return self.keys.object_name(sha256)

    def stored_path(self, name: str) -> Path:
        return self.objects / name[:2] / name

    def object_path(self, sha256: str) -> Path:
        """Where the object of content ``sha256`` is (or would be) stored."""
        return self.stored_path(self.name_of(sha256))

    def remove_object(self, name: str) -> int:
        """Delete one stored object by name; returns the bytes freed."""
        path = self.stored_path(name)
        size = path.stat().st_size
        path.unlink()
        return size

    def remove_leftovers(self) -> None:
        """Delete what interrupted backups left in ``data/`` (call under :meth:`locked`)."""
        for path in [*self.objects.glob(".incoming-*"), *self.objects.glob("??/.incoming-*")]:
            path.unlink()
        for path in self.objects.glob("tmp*"):
            shutil.rmtree(path, ignore_errors=True)

    def has(self, sha256: str) -> bool:
        """Whether the repository holds the content (or has it put, to be synced)."""
        return sha256 in self._unsynced or self.object_path(sha256).is_file()

    def put(self, source: Path) -> Stored:
        """Encrypt ``source`` in, hashing as it goes; the content is kept once."""
        with open(source, "rb") as src:
            return self.put_stream(src)

    def put_stream(self, src: BinaryIO, sha256: str | None = None) -> Stored:
        """Encrypt what ``src`` holds in (see :meth:`put`); given its ``sha256``, a content
        the repository holds is not read again.

        The object gets its name, durably, at the next :meth:`sync` (every
        :data:`SYNC_EVERY` objects, and before a manifest is saved).
        """
        if sha256 is not None and self.has(sha256):
            return Stored(sha256, src.seek(0, io.SEEK_END), 0)
        self.objects.mkdir(mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.objects, prefix=".incoming-",
                                         delete=False) as tmp:  # fmt: skip
            sha256, size = self.keys.encrypt(src, tmp)
        if self.has(sha256):
            os.unlink(tmp.name)
            return Stored(sha256, size, 0)
        os.chmod(tmp.name, 0o600)
        self._unsynced[sha256] = Path(tmp.name)
        if len(self._unsynced) >= SYNC_EVERY:
            self.sync()
        return Stored(sha256, size, size)

    def sync(self) -> None:
        """Make the objects put since the last sync durable, then name them.

        Each is flushed to disk, in parallel (one fsync after another cost a journal
        commit each: 2-3 ms per object here, most of an incremental backup), then
        renamed into place, then the folders they went into are flushed: an object is
        never found under its name before its content is on disk.
        """
        unsynced, self._unsynced = self._unsynced, {}
        with ThreadPoolExecutor(SYNC_THREADS) as pool:
            list(pool.map(fsync_file, unsynced.values()))
        folders = set()
        for sha256, tmp in unsynced.items():
            target = self.object_path(sha256)
            if not target.parent.is_dir():
                target.parent.mkdir(mode=0o700)
                folders.add(self.objects)
            os.replace(tmp, target)
            folders.add(target.parent)
        with ThreadPoolExecutor(SYNC_THREADS) as pool:
            list(pool.map(fsync_dir, folders))

    def stored_size(self, size: int) -> int:
        return encrypted_size(size)

    def copy_to(self, sha256: str, dst: BinaryIO | None) -> None:
        """Decrypt an object (into ``dst``, if any); :class:`BackupError` if damaged."""
        path = self.object_path(sha256)
        try:
            with open_plain(path) as src:
                found, _size = self.keys.decrypt(src, dst, str(path))
        except OSError as exc:
            raise BackupError(f"{path}: cannot read it ({exc.strerror})") from None
        if found != sha256:  # a whole object of this repository, stored under another name
            raise BackupError(f"{path}: checksum mismatch (the object is damaged or altered)")

    # ---------------------------------------------------------------- snapshots

    def snapshot_names(self) -> list[str]:
        """Names of the snapshots, oldest first."""
        if not self.snapshots.is_dir():
            return []
        return sorted(p.name for p in self.snapshots.iterdir() if not p.name.startswith("."))

    def latest(self) -> dict[str, Any] | None:
        """The newest snapshot's manifest, or None for a new repository."""
        names = self.snapshot_names()
        return self.manifest(names[-1]) if names else None

    def manifest(self, name: str) -> dict[str, Any]:
        """One snapshot's manifest: authenticated as snapshot ``name`` of this repository,
        then validated (:func:`appliance.backup.manifest.parse`)."""
        raw = read_limited(self.snapshots / name, encrypted_size(MAX_MANIFEST_BYTES),
                           f"snapshot {name}")  # fmt: skip
        return self.manifest_from(raw, name)

    def manifest_from(self, raw: bytes, name: str, read: Read | None = None) -> dict[str, Any]:
        """The manifest of snapshot ``name`` from its encrypted bytes (read anywhere), its
        parts read with ``read`` (default: :meth:`part`, from this repository)."""
        plain = self._plain(raw, name)
        self._known = {}  # the parts of the last manifest read here, for the next save
        known = self._known if read is None else None
        return parse(plain, name, read=read or self.part, known=known)

    def latest_top(self) -> dict[str, Any] | None:
        """The newest snapshot's manifest as saved, none of its parts read (see
        :func:`appliance.backup.manifest.parse_top`); None for a new repository, or one
        whose newest manifest is not saved in parts."""
        names = self.snapshot_names()
        if not names:
            return None
        raw = read_limited(self.snapshots / names[-1], encrypted_size(MAX_MANIFEST_BYTES),
                           f"snapshot {names[-1]}")  # fmt: skip
        plain = self._plain(raw, names[-1])
        return parse_top(plain, names[-1])

    def part_entries(self, ref: dict[str, Any], section: str, name: str) -> dict[str, Any]:
        """The entries of one part of snapshot ``name``'s ``section``, checked and validated."""
        entries = part_entries(ref, self.part(ref["sha256"], ref["size"]), name, section)
        if problem := entries_problem(section, entries):
            raise BackupError(f"snapshot {name} refused (its manifest is not valid): {problem}")
        return entries

    def _plain(self, raw: bytes, name: str) -> bytes:
        plain = io.BytesIO()
        try:
            self.keys.decrypt(io.BytesIO(raw), plain, f"snapshot {name}", manifest_domain(name))
        except BackupError as exc:
            raise BackupError(f"{exc}; it was refused.") from None
        return plain.getvalue()

    def part(self, sha256: str, size: int) -> bytes:
        """A manifest part's content (:mod:`appliance.backup.parts`), checked."""
        if problem := self.problem(sha256, size):
            raise BackupError(f"a part of a snapshot's manifest: {problem}")
        return self.read(sha256)

    def content_of(self, sealed: bytes, sha256: str) -> bytes:
        """The content of an object of this repository read elsewhere (an off-site copy),
        authenticated and checked against ``sha256``."""
        plain = io.BytesIO()
        found, _size = self.keys.decrypt(io.BytesIO(sealed), plain, f"object {sha256}")
        if found != sha256:
            raise BackupError(f"object {sha256}: checksum mismatch (damaged or altered)")
        return plain.getvalue()

    def trusted(self, _manifest: dict[str, Any]) -> bool:
        """Always: every manifest read was authenticated with the repository's key."""
        return True

    def save(self, name: str, manifest: dict[str, Any]) -> int:
        """Write a snapshot's manifest, in parts (:mod:`appliance.backup.parts`), encrypted,
        last: a snapshot exists only once complete. Returns the bytes written (the
        manifest and the parts not stored before)."""
        written = 0

        def put(raw: bytes) -> tuple[str, int]:
            nonlocal written
            stored = self.put_stream(io.BytesIO(raw), hashlib.sha256(raw).hexdigest())
            written += stored.copied
            return stored.sha256, stored.size

        raw = json.dumps(split(manifest, put, self._known)).encode()
        self.sync()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BackupError(
                f"snapshot {name}: its manifest would be {len(raw)} bytes, more than a "
                f"restore reads ({MAX_MANIFEST_BYTES}); no snapshot was written."
            )
        sealed = io.BytesIO()
        self.keys.encrypt(io.BytesIO(raw), sealed, manifest_domain(name))
        write_private_file(self.snapshots / name, sealed.getvalue())
        return written + len(sealed.getvalue())

    def remove_snapshot(self, name: str) -> None:
        """Delete one snapshot's manifest (its objects stay until pruned)."""
        (self.snapshots / name).unlink()


def readable(root: Path, key: bytes | None) -> Repository | LegacyRepository:
    """The snapshots to read in ``root``: the encrypted ones, or those of a repository from
    before encryption (also while a migration has not yet encrypted any snapshot)."""
    encrypted = Repository(root, key)
    legacy = LegacyRepository(root, key)
    if encrypted.exists() and (encrypted.snapshot_names() or not legacy.snapshot_names()):
        return encrypted
    return legacy if legacy.snapshot_names() else encrypted
