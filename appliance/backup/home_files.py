"""Which files of the home a snapshot looks at: those in folders that can have changed.

A folder's mtime moves whenever an entry in it is created, removed or renamed, and every
writer of the home replaces a file by writing a new one and renaming it over the old
(frame files, previews and series metadata through ``appliance.durable.write_atomic``,
secrets and settings likewise). So a snapshot records each folder's mtime (``folders``),
and a folder whose mtime did not move holds the same files: their entries are taken from
the previous manifest without a ``stat`` of each.

Outside ``frames/`` (settings, secrets, TLS files, the spool: a few folders whatever the
archive holds) every folder is stat'ed each time and listed if it moved. Below
``frames/`` (several folders per instance) a snapshot does not even stat the folders of
the archive: it asks the journal which series can have changed since the last one
(:mod:`appliance.backup.frames_changes`, recorded as ``frames_log``) and looks only at
those series' folders, and at ``frames/`` itself, listed if it moved (a study added or
deleted). A day's new studies cost their own files and folders.

What this does not see (a file rewritten in place, a frame folder the journal knows
nothing of) is caught by a full walk, which stats every file: the first snapshot, one
after a snapshot without ``frames_log``, then whenever the last full walk is more than
:data:`FULL_WALK_EVERY` old. A folder whose mtime is within :data:`SETTLE_NS` of the
snapshot is listed again next time (a second change within the clock's granularity would
not move it).
"""

from __future__ import annotations

import os
import stat
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.backup.frames_changes import MAX_PENDING, Series, changed_series, in_progress
from appliance.backup.manifest import SKIPPED
from appliance.backup.repository import Repository
from appliance.layout import HomeLayout

FULL_WALK_EVERY = timedelta(days=7)
SETTLE_NS = 2_000_000_000
UNSETTLED = -1  # a folder's recorded mtime when it must be listed again next time
FRAMES = "frames"  # HomeLayout.frames_dir, relative to the home


@dataclass
class HomeWalk:
    """The files a snapshot reads, and what it keeps of the previous one."""

    examine: list[tuple[str, Path]] = field(default_factory=list)  # stat (and put if changed)
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)  # entries that stay as they were
    folders: dict[str, int] = field(default_factory=dict)  # the manifest's ``folders``
    walked: str = ""  # when the last full walk was (ISO, UTC)
    full: bool = False
    folders_checked: int = 0
    frames_log: dict[str, Any] | None = None  # the manifest's ``frames_log`` (None: none)
    studies: list[str] = field(default_factory=list)  # frames/<study> (after walk_changes)
    subtrees: list[str] = field(default_factory=list)  # frames/ folders walked (added, series)
    stray: bool = False  # a file directly in frames/ (walk_changes)


def walk_home(home: Path, previous: dict[str, Any], now: datetime | None = None) -> HomeWalk:
    """The walk of ``home`` after the snapshot ``previous`` (``{}``: none, a full walk)."""
    asked = datetime.now(UTC).isoformat(timespec="seconds")  # before the journal is read
    now = now or datetime.now(UTC)
    database = HomeLayout(home).database_file
    if not full_walk_due(previous, now):
        series = changed_series(database, previous["frames_log"])
        return walk_changes(home, previous, series, asked)
    walk = HomeWalk(walked=now.isoformat(timespec="seconds"), full=True)
    _Walker(home, {}, walk).top()
    _log_pending(walk, in_progress(database, None), asked)
    return walk


def full_walk_due(previous: dict[str, Any], now: datetime) -> bool:
    """Whether the snapshot after ``previous`` must stat every file (see the module)."""
    walked, log = previous.get("walked"), previous.get("frames_log")
    return walked is None or log is None or now - datetime.fromisoformat(walked) > FULL_WALK_EVERY


def walk_changes(
    home: Path, previous: dict[str, Any], series: set[Series], asked: str,
    studies: set[str] | None = None,
) -> HomeWalk:  # fmt: skip
    """The walk of the home's folders outside ``frames/``, of the ``series`` and of the
    studies added since ``previous``, whose ``files`` and ``folders`` need only hold those
    (and ``studies``, frames/<study>, the study folders it had, when it holds no others)."""
    walk = HomeWalk(walked=previous["walked"])
    walker = _Walker(home, previous, walk, studies)
    walker.top(skip=FRAMES)
    walker.frames(series)
    _log_pending(walk, in_progress(HomeLayout(home).database_file, series), asked)
    return walk


def _log_pending(walk: HomeWalk, pending: list[Series], asked: str) -> None:
    if len(pending) <= MAX_PENDING:  # else no record: the next snapshot walks it all
        walk.frames_log = {"asked": asked, "pending": [list(s) for s in pending]}


class _Walker:
    """One walk: the previous manifest's files and folders grouped by folder."""

    def __init__(
        self, home: Path, previous: dict[str, Any], walk: HomeWalk, studies: set[str] | None = None
    ) -> None:
        self.home, self.walk, self.studies = home, walk, studies
        self.key = HomeLayout(home).backup_key_file  # a backup never holds the key it uses
        self.before: dict[str, int] = previous.get("folders", {})
        self.files_in: dict[str, list[str]] = defaultdict(list)
        self.entries = previous.get("files", {})
        for rel in self.entries:
            self.files_in[rel.rpartition("/")[0]].append(rel)
        self.folders_in: dict[str, list[str]] = defaultdict(list)
        for rel in self.before:
            self.folders_in[rel.rpartition("/")[0]].append(rel)
        self.settled_before = time.time_ns() - SETTLE_NS

    def top(self, skip: str = "") -> None:
        """The home's own files, always looked at, and its folders but the skipped ones
        (and ``skip``)."""
        for entry in sorted(os.scandir(self.home), key=lambda e: e.name):
            if entry.name in SKIPPED or entry.name == skip:
                continue
            if entry.is_dir(follow_symlinks=False):
                self.folder(entry.name)
            else:
                self.walk.examine.append((entry.name, Path(entry.path)))

    def folder(self, rel: str) -> None:
        """One folder: listed if it changed, else taken from the previous manifest."""
        pending = [rel]
        while pending:
            rel = pending.pop()
            try:
                mtime = os.lstat(self.home / rel).st_mtime_ns
            except FileNotFoundError:
                continue
            if self._unchanged(rel, mtime):
                self.walk.kept.update((f, self.entries[f]) for f in self.files_in.get(rel, ()))
                pending += self.folders_in.get(rel, ())
            else:
                pending += self._list(rel)

    def frames(self, series: set[Series]) -> None:
        """``frames/``: the studies added (listed, when its mtime moved) and the ``series``
        (study, series) walked; every other folder's entries kept without a look."""
        try:
            mtime = os.lstat(self.home / FRAMES).st_mtime_ns
        except FileNotFoundError:
            return
        before = set(self.folders_in.get(FRAMES, ())) if self.studies is None else self.studies
        if self._unchanged(FRAMES, mtime):
            studies, added = before, set()
            self.walk.kept.update((f, self.entries[f]) for f in self.files_in.get(FRAMES, ()))
        else:
            examined = len(self.walk.examine)
            studies = set(self._list(FRAMES))
            added = studies - before
            self.walk.stray = len(self.walk.examine) > examined
        kept = studies - added
        walked = {f"{FRAMES}/{a}/{b}" for a, b in series if f"{FRAMES}/{a}" in kept}
        self.walk.studies, self.walk.subtrees = sorted(studies), sorted(added | walked)
        for rel in self.walk.subtrees:
            self.folder(rel)
        for rel in kept:
            self._keep(rel, walked)

    def _unchanged(self, rel: str, mtime: int) -> bool:
        """Record the folder's mtime; whether it is the settled one the previous had."""
        self.walk.folders_checked += 1
        self.walk.folders[rel] = mtime if mtime < self.settled_before else UNSETTLED
        return self.before.get(rel, UNSETTLED) == mtime != UNSETTLED

    def _keep(self, rel: str, walked: set[str]) -> None:
        """The previous entries of the folder ``rel`` and below it, but ``walked``'s."""
        pending = [rel]
        while pending:
            rel = pending.pop()
            if rel in walked or rel not in self.before:
                continue
            self.walk.folders[rel] = self.before[rel]
            self.walk.kept.update((f, self.entries[f]) for f in self.files_in.get(rel, ()))
            pending += self.folders_in.get(rel, ())

    def _list(self, rel: str) -> list[str]:
        """Put the folder's files up for examination; its sub-folders."""
        folders = []
        try:
            entries = list(os.scandir(self.home / rel))
        except (FileNotFoundError, NotADirectoryError):
            return []
        for entry in entries:
            child = f"{rel}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                folders.append(child)
            elif Path(entry.path) != self.key:
                self.walk.examine.append((child, Path(entry.path)))
        return folders


def put_file(repo: Repository, path: Path, before: dict[str, Any] | None):
    """(manifest entry, bytes copied); (None, 0) if the file went away meanwhile.

    The content is read only if its (size, mtime) changed, or the repository lost the
    object the previous entry names.
    """
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            return None, 0
        same = (before and before["size"] == info.st_size and before["mtime_ns"] == info.st_mtime_ns
                and repo.has(before["sha256"]))  # fmt: skip
        stored = None if same else repo.put(path)
    except FileNotFoundError:
        return None, 0
    entry = {"sha256": before["sha256"] if same else stored.sha256,
             "size": info.st_size if same else stored.size,  # the size of what was read
             "mtime_ns": info.st_mtime_ns, "mode": info.st_mode & 0o777}  # fmt: skip
    return entry, 0 if same else stored.copied
