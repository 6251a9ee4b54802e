"""A snapshot's manifest in parts: what a snapshot writes grows with what changed.

A whole manifest names every file and instance of the archive (about 1.4 KB per
instance: 14 MB at 10,000 instances), and each snapshot wrote all of it. Now its large
sections (:data:`SPLIT`) are cut into parts, each stored as an ordinary object of the
repository (encrypted, named by its content, kept once), and the manifest itself holds
the list of its parts (``parts``: SHA-256 and size of each) and the small fields. A part
that did not change is the same object as yesterday's: a snapshot writes only the parts
its changes fall in, and a prune keeps or removes parts like any object.

Where a section is cut does not move with the rest of it: ``files`` and ``folders`` are
in path order, ``orthanc`` in the order instances were added (new ones at the end), and
a part ends after an entry whose key hashes to a boundary (about one in :data:`AVERAGE`;
content-defined chunking, as in rsync or restic). A day's new study falls into one or two
parts; a deleted one changes the parts it was in; the others stay byte for byte.

Reading joins the parts back in order (:func:`join`), each authenticated and checked
against its SHA-256 as it is read, then the whole is validated like any manifest
(:func:`appliance.backup.manifest.check`); a key in two parts is refused. Since manifest
format 4 a part's reference also names its first key and its number of entries (checked
as it is read), so that an incremental snapshot finds the parts a change falls in without
reading the others (:mod:`appliance.backup.patch`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from appliance.backup.errors import BackupError

SPLIT = ("files", "folders", "orthanc")
ORDERED = ("files", "folders")  # in path order; "orthanc" as the instances were added
AVERAGE = 256  # entries per part, on average
LONGEST = 8 * AVERAGE  # a part ends here whatever its keys
MAX_PARTS = 1 << 20
REF = ("sha256", "size", "first", "count")  # a part's reference (format 4)
HEX64 = re.compile(r"[0-9a-f]{64}")

Put = Callable[[bytes], tuple[str, int]]
"""Store one part's bytes; (its SHA-256, its size)."""
Read = Callable[[str, int], bytes]
"""The content of the part of (SHA-256, size), authenticated and checked."""
Known = dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]
"""Parts read: (section, first key) -> (the part's reference, its entries)."""


def split(manifest: dict[str, Any], put: Put, known: Known | None = None) -> dict[str, Any]:
    """The manifest to save: ``manifest`` with its large sections stored through ``put``.

    A part holding the same entries as one of ``known`` (the previous manifest's, as
    :func:`join` read them) is that part: it is neither serialised nor stored again. A
    section given as a function of ``put`` (:mod:`appliance.backup.patch`) makes its own
    list of parts.
    """
    given = {s: manifest.get(s) for s in SPLIT}
    split_here = [s for s, v in given.items() if isinstance(v, dict) or callable(v)]
    top = {k: v for k, v in manifest.items() if k not in split_here}
    top["parts"] = {}
    for section in split_here:
        entries = manifest[section]
        if callable(entries):
            top["parts"][section] = entries(put)
            continue
        refs = []
        for keys in cut(entries, section in ORDERED):
            ref = _same(known or {}, section, keys, entries)
            refs.append(ref if ref is not None else store(entries, keys, put))
        top["parts"][section] = refs
    return top


def store(entries: dict[str, Any], keys: list[str], put: Put) -> dict[str, Any]:
    """The reference of a new part holding ``keys``' entries, stored through ``put``."""
    sha256, size = put(json.dumps({k: entries[k] for k in keys}).encode())
    return {"sha256": sha256, "size": size, "first": keys[0], "count": len(keys)}


def cut(entries: dict[str, Any], ordered: bool) -> list[list[str]]:
    """The keys of the section's parts, each ending on a boundary key."""
    keys = sorted(entries, key=str) if ordered else list(entries)
    parts, start = [], 0
    for i, key in enumerate(keys):
        if i + 1 - start >= LONGEST or _boundary(str(key)):
            parts.append(keys[start : i + 1])
            start = i + 1
    if start < len(keys):
        parts.append(keys[start:])
    return parts


def _same(known: Known, section: str, keys: list[str], entries: dict[str, Any]) -> dict | None:
    """The known part with exactly these entries, in this order; None if there is none."""
    ref, before = known.get((section, keys[0]), (None, {}))
    if ref is None or len(before) != len(keys):
        return None
    same = all(k == b and entries[k] == v for k, (b, v) in zip(keys, before.items(), strict=True))
    return {**ref, "first": keys[0], "count": len(keys)} if same else None


def _boundary(key: str) -> bool:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[0] < 256 // AVERAGE


def join(
    top: dict[str, Any], read: Read, name: str, limit: int, known: Known | None = None
) -> dict[str, Any]:
    """The whole manifest from its saved form (one without ``parts`` as it is); its parts
    may hold at most ``limit`` bytes. Each part read goes into ``known``, by its first key."""
    if "parts" not in top:
        return top
    parts = top["parts"]
    if not valid_parts(parts):
        raise BackupError(f"snapshot {name} refused (its manifest is not valid): 'parts' is "
                          "not a list of parts (SHA-256 and size) per section")  # fmt: skip
    if sum(r["size"] for refs in parts.values() for r in refs) > limit:
        raise BackupError(f"snapshot {name}: its parts hold more than {limit} bytes")
    whole = dict(top)
    for section, refs in parts.items():
        whole[section] = {}
        for ref in refs:
            entries = part_entries(ref, read(ref["sha256"], ref["size"]), name, section)
            if not whole[section].keys().isdisjoint(entries.keys()):
                raise BackupError(f"snapshot {name} refused: a {section} entry is in two parts")
            whole[section].update(entries)
            if known is not None and entries:  # a copy: the caller may change whole's
                copy = {k: dict(v) if isinstance(v, dict) else v for k, v in entries.items()}
                known[(section, next(iter(entries)))] = (ref, copy)
    return whole


def part_entries(ref: dict[str, Any], raw: bytes, name: str, section: str) -> dict[str, Any]:
    """The entries of the part ``ref`` from its content; :class:`BackupError` unless a JSON
    object that starts with the key and holds the number of entries its reference names."""
    try:
        entries = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BackupError(f"snapshot {name}: a part of its {section} is not JSON ({exc})") from None
    if not isinstance(entries, dict):
        raise BackupError(f"snapshot {name}: a part of its {section} is not a JSON object")
    if "first" in ref and (len(entries) != ref["count"] or next(iter(entries)) != ref["first"]):
        raise BackupError(f"snapshot {name}: a part of its {section} is not the one its "
                          "reference describes (first key, number of entries)")  # fmt: skip
    return entries


def valid_parts(parts: Any) -> bool:
    """Whether ``parts`` is, per section of :data:`SPLIT`, a list of references: SHA-256 and
    size, and (since format 4) the part's first key and its number of entries."""
    return (
        isinstance(parts, dict)
        and set(parts) <= set(SPLIT)
        and all(isinstance(refs, list) and len(refs) <= MAX_PARTS for refs in parts.values())
        and all(_valid_ref(ref) for refs in parts.values() for ref in refs)
    )


def _valid_ref(ref: Any) -> bool:
    if not isinstance(ref, dict) or set(ref) not in ({"sha256", "size"}, set(REF)):
        return False
    return (
        isinstance(ref["sha256"], str)
        and HEX64.fullmatch(ref["sha256"]) is not None
        and type(ref["size"]) is int
        and ref["size"] >= 0
        and ("first" not in ref or (isinstance(ref["first"], str) and len(ref["first"]) <= 4096))
        and ("count" not in ref or (type(ref["count"]) is int and 1 <= ref["count"] <= LONGEST))
    )


def part_objects(manifest: dict[str, Any]) -> set[tuple[str, int]]:
    """The parts a (joined) manifest is stored in, as objects (SHA-256, size)."""
    return {(r["sha256"], r["size"]) for refs in manifest.get("parts", {}).values() for r in refs}
