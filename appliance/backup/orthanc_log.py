"""Which Orthanc instances a snapshot must ask Orthanc about: what changed since the last one.

Orthanc 1.10.1 logs a ``NewInstance`` change for every instance stored, a replaced one
included (same ID, new attachment). It logs nothing readable for a deletion: the changes
of a deleted resource leave the log with it. So a snapshot records where it stopped reading
the log (``orthanc_log``: the last sequence number and a few *witnesses*, changes it saw),
and the next one

1. checks that the log goes on from there: a witness still in the log, none contradicted
   (another change under its number), the last number not lower. Otherwise (Orthanc reset
   or restored, its log cleared, another database) it lists every instance and asks about
   each, as a first snapshot does, and says why (:attr:`OrthancPlan.listing`);
2. reads the changes since that number (``GET /changes``, :data:`PAGE` at a time): the
   instances to ask about are the new ones; the others keep their previous entries;
3. compares Orthanc's instance count (``GET /statistics``) with the previous instances plus
   the new ones. Equal: nothing was deleted. Lower: something was, so the IDs are listed
   once (``GET /instances``, one call, no question per instance) and the gone ones dropped.
   Higher: the log does not explain what Orthanc holds, and the snapshot falls back to a
   full listing as in 1.

Instances arriving meanwhile are read from the log again before the count is trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.store.orthanc import OrthancStore

log = logging.getLogger("neuronova.backup")
PAGE = 1000  # changes per GET /changes
WITNESSES = 4  # changes kept to recognise the same log next time
COUNT_ATTEMPTS = 3  # reads of the count while instances keep arriving


@dataclass
class OrthancPlan:
    """What a snapshot does about Orthanc's instances."""

    kept: dict[str, dict[str, Any]]  # previous entries that stay as they were
    ask: list[str]  # instances to ask Orthanc about (their attachment)
    position: dict[str, Any]  # the manifest's ``orthanc_log``: where the next snapshot reads on
    listing: str = ""  # why every instance was listed and asked about; "" if not
    deletions: int = 0  # previous instances found gone (through one ID listing)


@dataclass
class _Read:
    """Changes read from the log: the new instances, in order, and the position after."""

    new: dict[str, None] = field(default_factory=dict)
    last: int = 0
    newest: dict[str, Any] | None = None


def plan(orthanc: OrthancStore, previous: dict[str, Any]) -> OrthancPlan:
    """What to ask Orthanc about, given the previous snapshot's manifest (``{}``: none)."""
    entries = previous.get("orthanc", {})
    position = previous.get("orthanc_log")
    if position is None:
        why = "no earlier snapshot read Orthanc's change log" if previous else "first snapshot"
        return full_listing(orthanc, why, quiet=not previous)
    if problem := _broken(orthanc, position):
        return full_listing(orthanc, problem)
    read, count, more = _read_with_count(orthanc, position["last"])
    known = entries.keys() | read.new.keys()
    if count > len(known):
        return full_listing(orthanc, f"Orthanc holds {count} instances, its change log since "
                                     f"{position['last']} explains {len(known)}")  # fmt: skip
    kept = {i: e for i, e in entries.items() if i not in read.new}
    deletions = 0
    if count < len(known) or more.new:  # deleted (or still arriving): list the IDs once
        listed = set(orthanc.instance_ids())
        _merge(read, _read(orthanc, read.last))
        if stray := listed - known - read.new.keys():
            return full_listing(orthanc, f"{len(stray)} instances Orthanc holds are in no "
                                         "snapshot and not in its change log")  # fmt: skip
        deletions = sum(1 for i in kept if i not in listed)
        kept = {i: e for i, e in kept.items() if i in listed}
    return OrthancPlan(kept, list(read.new), _position(read, position), deletions=deletions)


def plan_appended(
    orthanc: OrthancStore, position: dict[str, Any], count_before: int
) -> OrthancPlan | None:
    """The plan when Orthanc only added instances since ``position``, where the previous
    snapshot held ``count_before``: the new ones to ask about, every previous entry kept
    (``kept`` is empty: they stay where they are). None when the log does not go on, or
    Orthanc's count is not ``count_before`` plus the new ones (a deletion, a replacement,
    instances still arriving): :func:`plan`, with the previous entries, sorts that out."""
    if _broken(orthanc, position):
        return None
    read, count, more = _read_with_count(orthanc, position["last"])
    if more.new or count != count_before + len(read.new):
        return None
    return OrthancPlan({}, list(read.new), _position(read, position))


def _read_with_count(orthanc: OrthancStore, since: int) -> tuple[_Read, int, _Read]:
    """The changes after ``since``, Orthanc's instance count, and the changes read after
    the count (empty unless instances kept arriving through every attempt)."""
    read = _read(orthanc, since)
    for _attempt in range(COUNT_ATTEMPTS):
        count = orthanc.instance_count()
        more = _read(orthanc, read.last)
        _merge(read, more)
        if not more.new:
            break
    return read, count, more


def full_listing(orthanc: OrthancStore, why: str, quiet: bool = False) -> OrthancPlan:
    """Every instance to ask about; the log's position taken first (nothing is missed)."""
    if not quiet:
        log.warning("backup: asking Orthanc about every instance: %s", why)
    answer = orthanc.newest_change()
    last = answer["Last"]
    newest = answer["Changes"][-1] if answer["Changes"] else None
    ids = orthanc.instance_ids()
    position = _position(_Read(last=last, newest=newest), {"last": last, "witnesses": []})
    return OrthancPlan({}, ids, position, listing=why)


def _broken(orthanc: OrthancStore, position: dict[str, Any]) -> str:
    """Why the log does not go on from ``position`` ("" if it does)."""
    confirmed = False
    for witness in position["witnesses"]:  # newest first; one found as it was is enough
        found = orthanc.changes(witness["seq"] - 1, 1)["Changes"]
        if found and found[0]["Seq"] == witness["seq"]:
            if _witness(found[0]) != witness:
                return f"change {witness['seq']} of Orthanc's log is another one (another database)"
            confirmed = True
            break
    if position["witnesses"] and not confirmed:
        return ("none of the changes earlier snapshots saw is in Orthanc's change log any more "
                "(log cleared, Orthanc reset or restored, or those resources deleted)")  # fmt: skip
    last = orthanc.changes(position["last"], 1)["Last"]
    if last < position["last"]:
        return f"Orthanc's change log restarted (last change {last}, was {position['last']})"
    return ""


def _read(orthanc: OrthancStore, since: int) -> _Read:
    """The changes after ``since``, page by page until the log says it is done."""
    read = _Read(last=since)
    while True:
        answer = orthanc.changes(read.last, PAGE)
        for change in answer["Changes"]:
            if change["ChangeType"] == "NewInstance":
                read.new[change["ID"]] = None
            read.newest = change
        done = answer["Done"] or not answer["Changes"]
        read.last = answer["Last"] if done else answer["Changes"][-1]["Seq"]
        if done:
            return read


def _merge(read: _Read, more: _Read) -> None:
    read.new.update(more.new)
    read.last = max(read.last, more.last)
    read.newest = more.newest or read.newest


def _witness(change: dict[str, Any]) -> dict[str, Any]:
    """What a manifest keeps of a change to recognise it again."""
    return {"seq": change["Seq"], "id": change["ID"], "type": change["ChangeType"],
            "date": change["Date"]}  # fmt: skip


def _position(read: _Read, before: dict[str, Any]) -> dict[str, Any]:
    """The ``orthanc_log`` to record: the last number read, the newest change first."""
    witnesses: Iterable[dict[str, Any]] = before["witnesses"]
    if read.newest is not None:
        newest = _witness(read.newest)
        witnesses = [newest, *(w for w in witnesses if w["seq"] != newest["seq"])]
    return {"last": read.last, "witnesses": list(witnesses)[:WITNESSES]}
