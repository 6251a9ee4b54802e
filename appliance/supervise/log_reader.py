"""Reading the logs in ``HOME/logs`` back: per component, rotated files oldest first,
merged by time, filtered by a start time, and followed as they grow (``neuronova logs``).

Each line's time comes from its own format: the appliance's JSON lines (``time``, UTC),
their plain-text form and older text logs (local time), nginx's error log (local) and
access log (with its offset), Orthanc's glog lines (local, no year). A line without a
time (a traceback under a text line) keeps the time of the line above it.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# Component -> the base names of its logs (``neuronova run`` writes these).
COMPONENTS: dict[str, tuple[str, ...]] = {
    "supervisor": ("neuronova",),
    "app": ("app", "app*"),
    "worker": ("worker",),
    "receiver": ("receiver",),
    "orthanc": ("orthanc",),
    "nginx": ("nginx", "nginx-error"),
    "nginx-access": ("nginx-access",),
}
# Every component but nginx's access log (one line per request) when none is named.
DEFAULT_COMPONENTS = tuple(name for name in COMPONENTS if name != "nginx-access")
FOLLOW_POLL = 0.5  # seconds between looks at the files in follow mode
_TEXT_TIMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)"), "%Y-%m-%d %H:%M:%S"),  # ours, text
    (re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \["), "%Y/%m/%d %H:%M:%S"),  # nginx error
    (re.compile(r"\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\]"), "%d/%b/%Y:%H:%M:%S %z"),
]
_GLOG = re.compile(r"^[IWEF](\d{4} \d\d:\d\d:\d\d)\.\d+ ")  # Orthanc: I1129 18:04:47.123


@dataclass(frozen=True)
class Line:
    """One log line: when it was written (seconds), which component wrote it, its text."""

    time: float
    component: str
    text: str


def line_time(text: str) -> float | None:
    """The time a line was written, if it says (see the module's docstring)."""
    if text.startswith("{"):
        try:
            return datetime.fromisoformat(json.loads(text)["time"]).timestamp()
        except (ValueError, KeyError, TypeError):
            return None
    for pattern, layout in _TEXT_TIMES:
        found = pattern.search(text)
        if found:
            return datetime.strptime(found.group(1), layout).timestamp()
    glog = _GLOG.match(text)
    if glog is None:
        return None
    now = datetime.now()
    stamp = datetime.strptime(f"{now.year}{glog.group(1)}", "%Y%m%d %H:%M:%S")
    return (stamp if stamp <= now else stamp.replace(year=now.year - 1)).timestamp()


def render(text: str) -> str:
    """A JSON line as ``time severity logger[pid]: message`` (+ traceback); others as is."""
    if not text.startswith("{"):
        return text
    try:
        entry = json.loads(text)
        stamp = datetime.fromisoformat(entry["time"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        shown = (
            f"{stamp} {entry['severity']:<7} {entry['logger']}[{entry['pid']}]: {entry['message']}"
        )
    except (ValueError, KeyError, TypeError):
        return text
    return shown + (f"\n{entry['exception']}" if entry.get("exception") else "")


def log_files(log_dir: Path, component: str) -> list[Path]:
    """The current logs of ``component`` (``name.log``; rotated copies are found beside)."""
    found: set[Path] = set()
    for base in COMPONENTS[component]:
        found.update(p for p in log_dir.glob(f"{base}.log") if _belongs(p, component))
    return sorted(found)


def _belongs(path: Path, component: str) -> bool:
    """``app*`` matches app.log and app2.log, not another component's file."""
    stem = path.name.removesuffix(".log")
    return component != "app" or stem == "app" or stem[3:].isdigit()


def rotated(path: Path) -> list[Path]:
    """``path``'s rotated copies and ``path`` itself, oldest first (``.KEEP`` ... ``.1``)."""
    copies = [p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()]
    return [*sorted(copies, key=lambda p: -int(p.suffix[1:])), path]


def _lines_of(path: Path, component: str, end: Mark | None = None) -> Iterator[Line]:
    """Every line of one log and its rotated copies, oldest first, with their times;
    the current file only up to ``end`` when it is still the file ``end`` marked."""
    last = 0.0
    for part in rotated(path):
        limit = end.size if end is not None and part == path else None
        try:
            for text in _read_lines(part, limit, end.inode if end else None):
                last = line_time(text) or last
                yield Line(last, component, text)
        except FileNotFoundError:  # rotated away while we read: its lines moved on
            continue


def _read_lines(path: Path, limit: int | None, inode: int | None) -> Iterator[str]:
    """The lines of ``path``; only its first ``limit`` bytes if it is still ``inode``."""
    with open(path, "rb") as file:
        if limit is not None and os.fstat(file.fileno()).st_ino != inode:
            limit = None  # rotated since it was marked: the marked part is in a copy now
        read = 0
        for raw in file:
            read += len(raw)
            if limit is not None and read > limit:
                return  # past the mark (or a line still being written there): follow's
            yield raw.decode("utf-8", "replace").rstrip("\n")


@dataclass(frozen=True)
class Mark:
    """Where a component's log ended at one moment: its inode and size."""

    component: str
    inode: int
    size: int


def mark_ends(log_dir: Path, components: tuple[str, ...]) -> dict[Path, Mark]:
    """Where each current log of ``components`` ends now: ``read_logs`` reads up to
    there and ``follow`` goes on from there, so no line falls between the two."""
    marks = {}
    for component in components:
        for path in log_files(log_dir, component):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            marks[path] = Mark(component, info.st_ino, info.st_size)
    return marks


def read_logs(
    log_dir: Path,
    components: tuple[str, ...],
    since: float | None,
    ends: dict[Path, Mark] | None = None,
) -> Iterator[Line]:
    """The lines of ``components`` written at ``since`` or later, merged by time; the
    current files only up to ``ends`` (:func:`mark_ends`) when given."""
    ends = ends or {}
    streams = [
        _lines_of(path, component, ends.get(path))
        for component in components
        for path in log_files(log_dir, component)
    ]
    for line in heapq.merge(*streams, key=lambda line: line.time):
        if since is None or line.time >= since:
            yield line


@dataclass
class _Tail:
    """The unread end of one growing log; notices rotation (a new file at the path)."""

    path: Path
    component: str
    offset: int = 0
    inode: int | None = None
    partial: str = field(default="")

    def new_lines(self, most: int) -> list[Line]:
        """Complete lines written since the last call (at most ``most`` bytes read)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return []
        if info.st_ino != self.inode or info.st_size < self.offset:
            self.offset, self.inode, self.partial = 0, info.st_ino, ""
        with open(self.path, "rb") as file:
            file.seek(self.offset)
            data = file.read(most)
        self.offset += len(data)
        *complete, self.partial = (self.partial + data.decode("utf-8", "replace")).split("\n")
        now = time.time()
        return [Line(line_time(text) or now, self.component, text) for text in complete]


def follow(
    log_dir: Path,
    components: tuple[str, ...],
    until: Callable[[], bool],
    ends: dict[Path, Mark],
    most: int = 1024**2,
) -> Iterator[Line]:
    """Lines appended to the logs of ``components`` after ``ends`` (:func:`mark_ends`),
    until ``until()`` is true.

    Each look reads at most ``most`` bytes per file, so a log growing faster than it is
    shown cannot fill memory; logs created later (a service starting) are picked up.
    """
    tails = {path: _Tail(path, end.component, end.size, end.inode) for path, end in ends.items()}
    while not until():
        for component in components:
            for path in log_files(log_dir, component):
                if path not in tails:  # a log created since: all of it is new
                    tails[path] = _Tail(path, component)
        fresh = [line for tail in tails.values() for line in tail.new_lines(most)]
        yield from sorted(fresh, key=lambda line: line.time)
        time.sleep(FOLLOW_POLL)
