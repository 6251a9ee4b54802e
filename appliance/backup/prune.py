"""Retention of a backup repository: which snapshots stay, and pruning the rest.

A snapshot stays if it is the newest of one of the last ``keep_daily`` days that have a
snapshot, or the newest of one of the last ``keep_weekly`` ISO weeks that have one (as
restic's ``--keep-daily``/``--keep-weekly``: a pause in backups never makes the older
snapshots go sooner). Days and weeks are UTC, as snapshot names are. The newest snapshot
always stays. An object goes once no kept snapshot names it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.backup.manifest import SECTIONS
from appliance.backup.parts import part_objects
from appliance.backup.repository import SNAPSHOT_NAME, Repository


@dataclass(frozen=True)
class Keep:
    """How many daily and weekly snapshots to keep (``[backup] keep_daily, keep_weekly``)."""

    daily: int
    weekly: int


@dataclass(frozen=True)
class PruneResult:
    """What a prune removed (or, in a dry run, would remove)."""

    kept: list[str]
    removed: list[str]
    objects: int
    bytes_freed: int


def snapshot_time(name: str) -> datetime | None:
    """When a snapshot was taken, from its name; None for a name not ours."""
    try:
        return datetime.strptime(name, SNAPSHOT_NAME).replace(tzinfo=UTC)
    except ValueError:
        return None


def kept_snapshots(names: Iterable[str], keep: Keep) -> set[str]:
    """The snapshots ``keep`` retains among ``names`` (a name not ours always stays)."""
    per_day: dict[Any, str] = {}
    per_week: dict[Any, str] = {}
    foreign: set[str] = set()
    for name in sorted(names):  # oldest first: the newest of a day or week wins
        when = snapshot_time(name)
        if when is None:
            foreign.add(name)
            continue
        per_day[when.date()] = name
        per_week[when.isocalendar()[:2]] = name
    days = sorted(per_day, reverse=True)[: keep.daily]
    weeks = sorted(per_week, reverse=True)[: keep.weekly]
    return foreign | {per_day[d] for d in days} | {per_week[w] for w in weeks}


def referenced(manifests: Iterable[dict[str, Any]]) -> set[str]:
    """Every object (SHA-256) the given snapshot manifests name, their parts included."""
    found: set[str] = set()
    for manifest in manifests:
        found.update(e["sha256"] for section in SECTIONS for e in manifest[section].values())
        found.update(sha256 for sha256, _size in part_objects(manifest))
    return found


def stored_names(repo: Repository, sha256s: Iterable[str]) -> set[str]:
    """The names the objects of contents ``sha256s`` are stored under in ``repo``."""
    return {repo.name_of(sha256) for sha256 in sha256s}


def prune(repo: Repository, keep: Keep, dry_run: bool = False) -> PruneResult:
    """Remove the snapshots ``keep`` does not retain, then the objects none kept names.

    Manifests go first, objects after: interrupted at any point, every remaining
    snapshot still has all its objects. A kept manifest that does not validate stops the
    prune (:class:`BackupError`) before anything is removed.
    """
    with repo.locked():
        names = repo.snapshot_names()
        kept = kept_snapshots(names, keep)
        removed = [n for n in names if n not in kept]
        wanted = stored_names(repo, referenced(repo.manifest(n) for n in kept))
        unused = [name for name in repo.stored_names() if name not in wanted]
        if dry_run:
            freed = sum(repo.stored_path(name).stat().st_size for name in unused)
            return PruneResult(sorted(kept), removed, len(unused), freed)
        for name in removed:
            repo.remove_snapshot(name)
        freed = sum(repo.remove_object(name) for name in unused)
        repo.remove_leftovers()
    return PruneResult(sorted(kept), removed, len(unused), freed)
