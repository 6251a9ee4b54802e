"""Taking a snapshot of a running home, checking one, and restoring one into a new home.

Consistent while modalities keep sending:

- the app's and the queue's SQLite databases are copied with SQLite's online backup API;
- Orthanc 1.10.1 holds its SQLite index under an exclusive lock, so its index is read
  through its REST API instead: the list of instances first, then each instance's file
  (``storage/ab/cd/<uuid>``). An instance deleted or replaced in between is looked up
  once more and left out if gone, so every instance the manifest names has its file.
  Restore stores those files into a fresh Orthanc, which rebuilds its index from them;
- settings, secrets, TLS files, frame files and the spool are copied as files; a second
  snapshot reads again only files whose (size, mtime) changed.

Everything goes into the repository encrypted with keys wrapped by the home's backup key
(:mod:`appliance.backup.repository`); a repository from before that is migrated first.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.backup import incremental, orthanc_log
from appliance.backup.copying import (
    Progress,
    SnapshotResult,
    Work,
    put_all,
    stopped,
    top_fields,
)
from appliance.backup.home_files import walk_home
from appliance.backup.legacy import LegacyRepository
from appliance.backup.manifest import FORMAT, SECTIONS, backup_key
from appliance.backup.migrate import migrate_locked, needs_migration
from appliance.backup.parts import part_objects
from appliance.backup.repository import BackupError, Repository, readable
from appliance.config import Settings
from appliance.home import make_home_dirs
from appliance.layout import HomeLayout
from appliance.security.keys import write_private_file
from appliance.store.orthanc import OrthancStore, OrthancUnavailable

__all__ = ["Progress", "SnapshotResult", "Work", "restore_files", "take_snapshot", "verify"]


def take_snapshot(settings: Settings, dest: Path, progress: Progress) -> SnapshotResult:
    """Back the running home up into ``dest`` (a new or an earlier backup's folder)."""
    if dest.resolve().is_relative_to(settings.home):
        raise BackupError(
            f"{dest} is inside the home {settings.home}: each backup would copy the earlier "
            "ones. Choose a folder outside it (another disk, ideally)."
        )
    started = time.monotonic()
    orthanc = OrthancStore(settings)
    _orthanc_answers(orthanc)
    repo = Repository(dest, backup_key(settings.layout, create=True))
    repo.create()
    with repo.locked():
        if needs_migration(dest):  # a repository from before encryption: encrypted first
            migrate_locked(repo, progress, allow_unsigned=False)
        result = _snapshot_into(repo, settings, orthanc, progress)
    return dataclasses.replace(result, seconds=time.monotonic() - started)


def _snapshot_into(
    repo: Repository, settings: Settings, orthanc: OrthancStore, progress: Progress
) -> SnapshotResult:
    """The snapshot itself, under the repository's lock (``seconds`` left at 0): from the
    previous one's changed parts (:mod:`appliance.backup.incremental`) where it can, else
    from the whole previous manifest."""
    try:
        top = repo.latest_top()
        changes = top is not None and incremental.eligible(top)
        if changes and (result := incremental.snapshot_changes(repo, top, settings, orthanc,
                                                                 progress)):  # fmt: skip
            return result
        return _snapshot_whole(repo, settings, orthanc, progress)
    except OrthancUnavailable as exc:
        raise stopped(exc) from exc


def _snapshot_whole(
    repo: Repository, settings: Settings, orthanc: OrthancStore, progress: Progress
) -> SnapshotResult:
    """The snapshot after reading the previous manifest whole (none: a first snapshot)."""
    previous = repo.latest() or {}
    instances = orthanc_log.plan(orthanc, previous)
    walk = walk_home(settings.home, previous)
    put = put_all(repo, settings, orthanc, walk, instances.ask, previous, progress)
    manifest: dict[str, Any] = {
        "format": FORMAT, "files": walk.kept | put.files, "databases": put.databases,
        "orthanc": instances.kept | put.orthanc, "folders": walk.folders,
        **top_fields(settings.layout, put.copied, instances.position, walk),
    }  # fmt: skip
    if (studies := incremental.studies_of(manifest)) is not None:
        manifest["studies"] = studies
    written = repo.save(manifest["name"], manifest)
    read = sum(ref["size"] for refs in previous.get("parts", {}).values() for ref in refs)
    return SnapshotResult(
        manifest["name"], len(manifest["files"]), len(manifest["orthanc"]), put.copied, 0.0,
        Work(len(walk.examine), walk.folders_checked, walk.full, len(instances.ask),
             instances.listing, instances.deletions, written, read),
    )  # fmt: skip


def verify(dest: Path, progress: Progress, key: bytes | None = None) -> list[str]:
    """Re-check every object every snapshot names; the problems found (empty: all good).

    A manifest that does not validate or is not authentic (an encrypted one that fails
    its authentication; an unencrypted one that, given the backup ``key``, another key
    signed) is a problem too; its objects are not read. An encrypted repository needs
    ``key`` (:class:`BackupError` without it, or with another one).
    """
    repo = open_snapshots(dest, key)
    names = repo.snapshot_names()
    wanted: set[tuple[str, int]] = set()
    problems: list[str] = []
    for name in names:
        try:
            manifest = repo.manifest(name)
        except BackupError as exc:
            problems.append(str(exc))
            continue
        wanted.update(_objects(manifest))
        problems += [
            f"snapshot {name}: Orthanc instance {i} has no file in the backup"
            for i, e in manifest["orthanc"].items()
            if not repo.has(e["sha256"])
        ]
    for done, (sha256, size) in enumerate(sorted(wanted), start=1):
        if (problem := repo.check(sha256, size)) is not None:
            problems.append(problem)
        progress(done, len(wanted))
    return problems


def _objects(manifest: dict[str, Any]) -> set[tuple[str, int]]:
    """Every object a manifest names, with the size it gives (its parts included)."""
    named = {(e["sha256"], e["size"]) for section in SECTIONS for e in manifest[section].values()}
    return named | part_objects(manifest)


@contextmanager
def new_home(home: Path) -> Iterator[None]:
    """Restore into ``home`` (absent or empty); on any failure, leave it as it was found.

    What the restore made (the home, or its content, and the folders above it it had to
    create) is removed before the error goes on.
    """
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise BackupError(f"{home} is not empty. Restore into a new folder: --home NEW_FOLDER.")
    made = next((p for p in reversed([home, *home.parents]) if not p.exists()), None)
    try:
        yield
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:
            for child in home.iterdir():
                _remove(child)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


Snapshots = Repository | LegacyRepository


def open_snapshots(src: Path, key: bytes | None) -> Snapshots:
    """The repository in ``src`` to read (encrypted, or from before encryption);
    :class:`BackupError` if it holds no snapshot, or (encrypted) without the right key."""
    repo = readable(src, key)
    if not repo.snapshot_names():
        raise BackupError(f"{src} holds no NeuroNova backup (no snapshot in it).")
    repo.unlock()
    return repo


def restore_files(
    repo: Snapshots, home: Path, key: bytes | None, allow_unsigned: bool = False
) -> dict[str, Any]:
    """Write the newest snapshot's files and databases into ``home`` (see :func:`new_home`).

    The manifest is authenticated with ``key`` (decrypted; or, from before encryption, its
    signature checked, an unsigned one only with ``allow_unsigned``) and validated, and
    every object it names checked to be there with its size, before anything is written;
    each object is authenticated and its SHA-256 checked as it is copied. ``key`` becomes
    the new home's backup key. Returns the manifest; its Orthanc instances go in with
    :func:`restore_instances`.
    """
    manifest = repo.latest()
    assert manifest is not None  # open_snapshots refused an empty repository
    _check_trust(repo, manifest, key, allow_unsigned)
    _check_objects(repo, manifest)
    layout = HomeLayout(home)
    make_home_dirs(layout)
    for rel, entry in manifest["databases"].items():
        repo.copy_out(entry["sha256"], home, rel, 0o600)
    for rel, entry in manifest["files"].items():
        repo.copy_out(entry["sha256"], home, rel, entry["mode"])
    if key is not None:
        write_private_file(layout.backup_key_file, key)
    return manifest


def _check_trust(
    repo: Snapshots, manifest: dict[str, Any], key: bytes | None, allow_unsigned: bool
) -> None:
    """Refuse a signed snapshot without its key, and an unsigned one unless allowed (an
    encrypted one was authenticated as it was read)."""
    if repo.encrypted:
        return
    name = manifest["name"]
    if repo.trusted(manifest) and key is None:
        raise BackupError(f"snapshot {name} is signed: give the backup key of the home it was "
                          "taken from with --key-file (its HOME/secrets/backup-key).")  # fmt: skip
    if not repo.trusted(manifest) and not allow_unsigned:
        raise BackupError(f"snapshot {name} is not signed (taken before NeuroNova signed its "
                          "backups): nothing shows it was not changed. If you trust this "
                          "backup, restore it with --allow-unsigned.")  # fmt: skip


def _check_objects(repo: Snapshots, manifest: dict[str, Any]) -> None:
    """Refuse the snapshot, naming the entry, if an object is missing or of another size."""
    for section in SECTIONS:
        for key, entry in manifest[section].items():
            if problem := repo.problem(entry["sha256"], entry["size"]):
                raise BackupError(f"snapshot {manifest['name']} refused, nothing restored: "
                                  f"{section} entry {key!r}: {problem}")  # fmt: skip


def restore_instances(
    repo: Snapshots, manifest: dict[str, Any], store: Callable[[bytes], str], progress: Progress
) -> int:
    """Store every Orthanc instance of ``manifest`` through ``store``; returns the count.

    Each instance's content is authenticated and checked against its SHA-256 before
    Orthanc gets it.
    """
    entries = list(manifest["orthanc"].values())
    for done, entry in enumerate(entries, start=1):
        store(repo.read(entry["sha256"]))
        progress(done, len(entries))
    return len(entries)


def _orthanc_answers(orthanc: OrthancStore) -> None:
    """Refuse to start (:class:`BackupError`) unless Orthanc answers."""
    try:
        orthanc.newest_change()
    except OrthancUnavailable as exc:
        raise BackupError(
            f"cannot list Orthanc's instances ({exc}). Is NeuroNova running? "
            "Start it with `neuronova run`; backups are taken while it runs."
        ) from exc
