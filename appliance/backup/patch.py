"""A snapshot's sections made from the previous one's parts: only the parts a change falls in
are read (issue 20).

An incremental snapshot knows where the home can have changed: the files and folders
outside ``frames/``, the series the journal names, the studies added or deleted
(:mod:`appliance.backup.home_files`), and the instances Orthanc added (after the others, in
the order they came: :mod:`appliance.backup.orthanc_log`). ``files`` and ``folders`` are
in path order and, since manifest format 4, each part's reference names its first key, so
the parts that hold a range of paths (:class:`Spans`) are found without reading any. Those
are read (authenticated, checked against their reference, validated), their entries in the
ranges replaced by what the walk found, and cut again; every other part stays the same
object, by reference, unread. ``orthanc`` gets the new instances after its last part.

So what a snapshot reads and writes of its manifest grows with what changed; only the
list of references (one per ~256 entries) grows with the archive. A part's entries not
read here are validated when a restore or a verify reads them, as every part is.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

from appliance.backup.errors import BackupError
from appliance.backup.home_files import FRAMES
from appliance.backup.parts import Put, cut, store

ReadPart = Callable[[dict[str, Any], str], dict[str, Any]]
"""The validated entries of a part: (its reference, its section) -> entries."""


class Spans:
    """Disjoint ranges of keys, each from ``lo`` (included) to ``hi`` (excluded; None: no end)."""

    def __init__(self, spans: Iterable[tuple[str, str | None]]) -> None:
        ordered = sorted(set(spans), key=lambda s: s[0])
        for (_, hi), (lo, _) in pairwise(ordered):
            if hi is None or hi > lo:
                raise BackupError(f"internal error: overlapping key ranges at {lo!r}")
        self.spans = ordered
        self.los = [lo for lo, _ in ordered]

    def __contains__(self, key: str) -> bool:
        i = bisect_right(self.los, key) - 1
        return i >= 0 and (self.spans[i][1] is None or key < self.spans[i][1])


def subtree(rel: str) -> list[tuple[str, str | None]]:
    """The keys of the folder ``rel`` itself and of everything below it."""
    return [(rel, rel + "\0"), (rel + "/", rel + "0")]  # "0" follows "/"


OUTSIDE_FRAMES = [("", f"{FRAMES}/"), (f"{FRAMES}0", None)]  # every key not below frames/


class Section:
    """A section in path order (``files``, ``folders``) of the previous snapshot, read by part."""

    def __init__(self, name: str, refs: list[dict[str, Any]], read: ReadPart) -> None:
        self.name, self.refs, self.read = name, refs, read
        self.firsts = [ref["first"] for ref in refs]
        if any(a >= b for a, b in zip(self.firsts, self.firsts[1:], strict=False)):
            raise BackupError(f"the previous snapshot's {name} parts are not in path order")
        self.entries: dict[int, dict[str, Any]] = {}
        self.bytes_read = 0

    def entries_in(self, spans: Spans) -> dict[str, Any]:
        """The previous entries whose key is in ``spans``."""
        return {k: v for i in self._touched(spans) for k, v in self._part(i).items() if k in spans}

    def patched(self, spans: Spans, new: dict[str, Any], put: Put) -> list[dict[str, Any]]:
        """The section's parts: the previous entries in ``spans`` replaced by ``new`` (every
        key of which must be in ``spans``); the parts they fall in stored through ``put``."""
        if stray := next((k for k in new if k not in spans), None):
            raise BackupError(f"internal error: {self.name} entry {stray!r} outside the changes")
        if not self.refs:
            return [store(new, keys, put) for keys in cut(new, True)]
        by_part: dict[int, dict[str, Any]] = defaultdict(dict)
        for key, entry in new.items():
            by_part[self._owner(key)][key] = entry
        refs, done = [], 0
        for run in _runs(self._touched(spans)):
            refs += self.refs[done : run[0]]
            merged = {k: v for i in run for k, v in self._part(i).items() if k not in spans}
            for i in run:
                merged.update(by_part.get(i, {}))
            refs += [store(merged, keys, put) for keys in cut(merged, True)]
            done = run[-1] + 1
        return refs + self.refs[done:]

    def _owner(self, key: str) -> int:
        """The part whose range holds ``key`` (the first part holds every key before it)."""
        return max(bisect_right(self.firsts, key) - 1, 0)

    def _touched(self, spans: Spans) -> list[int]:
        """The parts whose range meets one of ``spans``, in order."""
        touched: set[int] = set()
        for lo, hi in spans.spans if self.refs else ():
            end = len(self.refs) if hi is None else bisect_left(self.firsts, hi)
            touched.update(range(self._owner(lo), max(end, self._owner(lo) + 1)))
        return sorted(touched)

    def _part(self, i: int) -> dict[str, Any]:
        if i not in self.entries:
            entries = self.read(self.refs[i], self.name)
            lo = self.firsts[i] if i else ""
            hi = self.firsts[i + 1] if i + 1 < len(self.firsts) else None
            if any(key < lo or (hi is not None and key >= hi) for key in entries):
                raise BackupError(f"a part of the previous snapshot's {self.name} holds keys "
                                  "of another one")  # fmt: skip
            self.entries[i] = entries
            self.bytes_read += self.refs[i]["size"]
        return self.entries[i]


def _runs(indexes: list[int]) -> list[list[int]]:
    """``indexes`` (sorted) in runs of consecutive ones."""
    runs: list[list[int]] = []
    for i in indexes:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def appended(
    refs: list[dict[str, Any]], read: ReadPart, new: dict[str, Any], put: Put
) -> list[dict[str, Any]]:
    """``orthanc``'s parts with ``new`` entries after the others (the last part read and cut
    again with them)."""
    if not new:
        return list(refs)
    last = dict(read(refs[-1], "orthanc")) if refs else {}
    if not last.keys().isdisjoint(new):
        raise BackupError("internal error: an instance added twice to the orthanc section")
    last.update(new)
    return refs[:-1] + [store(last, keys, put) for keys in cut(last, False)]
