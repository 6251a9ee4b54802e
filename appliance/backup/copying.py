"""Copying what a snapshot names into the repository: the app's databases, the files the
walk of the home examines, and the Orthanc instances to ask about; and what one backup did."""

from __future__ import annotations

import dataclasses
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.backup.home_files import HomeWalk, put_file
from appliance.backup.repository import SNAPSHOT_NAME, BackupError, Repository
from appliance.config import Settings
from appliance.layout import HomeLayout
from appliance.store.orthanc import OrthancStore, OrthancUnavailable

Progress = Callable[[int, int], None]
"""Called with (items done, items in all) as a snapshot or restore goes."""


@dataclass(frozen=True)
class Work:
    """What a backup had to look at: it grows with what changed, not with the archive."""

    files_examined: int  # files stat'ed (those in folders that changed; all in a full walk)
    folders_checked: int  # folders stat'ed (listed only if they changed)
    full_walk: bool  # every file stat'ed (first snapshot, then weekly)
    orthanc_asked: int  # instances whose attachment Orthanc was asked about
    orthanc_listing: str  # why every instance was asked about ("": only the changed ones)
    orthanc_deleted: int  # instances of the previous snapshot found deleted
    manifest_bytes: int = 0  # written for the manifest (its parts that changed, and itself)
    manifest_read: int = 0  # of the previous manifest's parts, read (all: a whole read)

    def record(self) -> dict[str, Any]:
        """The fields of the backup's status record."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SnapshotResult:
    """What one backup did."""

    name: str
    files: int
    instances: int
    bytes_copied: int
    seconds: float
    work: Work


MOSTLY_FREE = 0.25  # a database copy with more of its pages free than this is vacuumed
PAGE_COUNTS = ("freelist_count", "page_count")


@dataclass
class Copied:
    """The new entries of a snapshot's sections, and the bytes of content newly stored."""

    databases: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)
    orthanc: dict[str, Any] = field(default_factory=dict)
    copied: int = 0


def put_all(
    repo: Repository, settings: Settings, orthanc: OrthancStore, walk: HomeWalk,
    ask: list[str], previous: dict[str, Any], progress: Progress,
) -> Copied:  # fmt: skip
    """Put the databases, the files ``walk`` examines and the instances of ``ask`` in;
    ``previous`` (the previous manifest's ``files`` and ``orthanc``, or those of them
    read) says what the repository holds already."""
    layout, out = settings.layout, Copied()
    total, done = len(ask) + len(walk.examine) + 2, 0
    databases = (("db/appliance.db", layout.database_file), ("db/queue.db", layout.queue_file))
    for name, path in databases:
        if path.exists():
            out.databases[name], n = put_database(repo, path, layout.run_dir)
            out.copied += n
        done += 1
        progress(done, total)
    before = previous.get("files", {})
    for rel, path in walk.examine:
        entry, n = put_file(repo, path, before.get(rel))
        if entry is not None:
            out.files[rel] = entry
        out.copied += n
        done += 1
        progress(done, total)
    storage, known = layout.orthanc_dir / "storage", previous.get("orthanc", {})
    for instance_id in ask:
        entry, n = _put_instance(repo, orthanc, storage, instance_id, known)
        if entry is not None:
            out.orthanc[instance_id] = entry
        out.copied += n
        done += 1
        progress(done, total)
    return out


def top_fields(
    layout: HomeLayout, copied: int, position: dict[str, Any], walk: HomeWalk
) -> dict[str, Any]:
    """The manifest's own fields: its name (the time now), the log positions read."""
    now = datetime.now(UTC)
    fields = {"name": now.strftime(SNAPSHOT_NAME), "created": now.isoformat(timespec="seconds"),
              "home": str(layout.home), "bytes_copied": copied, "orthanc_log": position,
              "walked": walk.walked}  # fmt: skip
    if walk.frames_log is not None:
        fields["frames_log"] = walk.frames_log
    return fields


def stopped(exc: OrthancUnavailable) -> BackupError:
    """The error of a backup Orthanc stopped answering during."""
    return BackupError(f"Orthanc stopped answering during the backup ({exc}); "
                       "no snapshot was written. Run the backup again.")  # fmt: skip


def put_database(repo: Repository, path: Path, scratch_in: Path) -> tuple[dict[str, Any], int]:
    """The database's online-backup copy (made in the home's ``scratch_in``: never in the
    clear in the repository) put in; (its manifest entry, bytes copied).

    A copy mostly of free pages is vacuumed first (:data:`MOSTLY_FREE`): Huey's queue
    keeps the pages of its largest backlog (4,320 of 4,329 free at 50,000 instances, 17.7
    MB stored again by every backup, since a few pages change each time).
    """
    scratch_in.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_in, prefix="backup-") as scratch:
        copy = Path(scratch) / "copy.db"
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)
            free, pages = (target.execute(f"PRAGMA {p}").fetchone()[0] for p in PAGE_COUNTS)
            if free > MOSTLY_FREE * pages:
                target.execute("VACUUM")
        finally:
            target.close()
            source.close()
        stored = repo.put(copy)
    return {"sha256": stored.sha256, "size": stored.size}, stored.copied


def _put_instance(
    repo: Repository, orthanc: OrthancStore, storage: Path, instance_id: str,
    previous: dict[str, Any],
) -> tuple[dict[str, Any] | None, int]:  # fmt: skip
    """(manifest entry, bytes copied); (None, 0) for an instance deleted meanwhile."""
    for _attempt in range(2):
        uuid = orthanc.attachment_uuid(instance_id)
        if uuid is None:
            return None, 0
        before = previous.get(instance_id)
        if before and before["uuid"] == uuid and repo.has(before["sha256"]):
            return before, 0
        try:
            stored = repo.put(storage / uuid[:2] / uuid[2:4] / uuid)
        except FileNotFoundError:
            continue  # replaced or deleted since we asked: ask again
        return {"uuid": uuid, "sha256": stored.sha256, "size": stored.size}, stored.copied
    return None, 0
