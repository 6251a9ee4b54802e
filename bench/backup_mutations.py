"""Seeded mutations of a real (encrypted) backup repository, as an attacker holding its
off-site copy (and perhaps the backup key) could make them: ``bench/fuzz.py``'s restores
of mutated backups.

A mutation changes the newest snapshot's manifest (a field of an entry, an entry's path),
the bytes of that manifest or of the repository's key record, or one of its objects; a
changed manifest is encrypted again with the backup key most of the time (an attacker who
has the key: the checks after the decryption must still refuse it), else written in the
clear in place of the encrypted one (an attacker without the key).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.backup.repository import Repository

ENCRYPT_AGAIN = 0.75  # share of changed manifests encrypted again with the right key
# Paths a restore must never write; "ABSOLUTE/" becomes a folder beside the target, and
# ".." never climbs above the fuzz run's own folder (the target is two levels down).
HOSTILE_PATHS = [
    "../escaped", "a/../../escaped", "frames/../../escaped", "ABSOLUTE/escaped", "..", ".",
    "", "./x", "frames//x", "frames/./x", "a\0b", "x" * 300, "/".join(["d"] * 3000),
    "secrets/backup-key", "orthanc/storage/x", "db/appliance.db", "run/x", "logs/x",
    "rclone/rclone.conf", "\\..\\escaped", "~/x", "frames/\n", "secrets", "spool",
]  # fmt: skip
HOSTILE_MODES = [0o4755, 0o2755, 0o1777, 0o6777, 0o100644, 0o7777, 0o1000, -1, 2**32 + 0o644,
                 2**64, 1.5, "0o644", "644", None, True]  # fmt: skip
HOSTILE_SIZES = [-1, 2**44 + 1, 2**63, 2**64, 10**30, 1.0, 1e308, float("inf"), float("nan"),
                 "1", None, True]  # fmt: skip
HOSTILE_DIGESTS = ["/etc/passwd", "../../../../etc/passwd", "0" * 63, "0" * 65, "g" * 64,
                   "../" + "0" * 61, "0" * 64 + "/", "", None, 7]  # fmt: skip
CONFUSED = [None, True, False, 0, -1, 1.5, "", "x", "9" * 400, [], [1], {}, {"a": 1}, [[[]]]]


@dataclass(frozen=True)
class Target:
    """Where a mutated backup is restored: ``place/home``, and the fuzz case's folder."""

    case: Path

    @property
    def backup(self) -> Path:
        return self.case / "backup"

    @property
    def place(self) -> Path:
        """The folder the target is in ('..' of the target; absolute paths point here)."""
        return self.case / "place"

    @property
    def home(self) -> Path:
        return self.place / "home"


def mutate_backup(rng: random.Random, target: Target, key: bytes) -> tuple[str, bool]:
    """Change the copy of a backup in ``target.backup`` once; returns (label, whether a
    restore may succeed: a manifest encrypted again, if it still validates)."""
    repo = Repository(target.backup, key)
    name = repo.snapshot_names()[-1]
    if rng.random() < 0.3:
        return f"object: {mutate_object(rng, repo, repo.manifest(name))}", False
    if rng.random() < 0.2:
        victim = rng.choice([repo.snapshots / name, repo.key_record])
        data, label = mutate_bytes(rng, victim.read_bytes())
        victim.write_bytes(data)
        return f"{victim.name} bytes: {label}", False
    manifest = repo.manifest(name)
    labels = [mutate_field(rng, manifest, target) for _ in range(rng.choice([1, 1, 1, 2]))]
    encrypted_again = rng.random() < ENCRYPT_AGAIN
    if encrypted_again:
        repo.save(name, manifest)
    else:
        (repo.snapshots / name).write_text(json.dumps(manifest))
    how = "encrypted again" if encrypted_again else "in the clear"
    return f"manifest: {'; '.join(labels)} ({how})", encrypted_again


# --------------------------------------------------------------------------- manifest


def mutate_field(rng: random.Random, manifest: dict[str, Any], target: Target) -> str:
    """One change of a parsed manifest, in place; returns what was done."""
    kind = rng.choice(["path", "path", "mode", "size", "digest", "uuid", "type", "type",
                       "drop", "extra", "top"])  # fmt: skip
    section = rng.choice(["files", "files", "databases", "orthanc"])
    entries = manifest.get(section)
    if not isinstance(entries, dict) or not entries or kind == "top":
        field = rng.choice(["format", "name", "files", "databases", "orthanc"])
        manifest[field] = value = rng.choice([*CONFUSED, "../x", 2, "1"])
        return f"top-level {field} = {_short(value)}"
    name = rng.choice(sorted(entries))
    entry = entries[name]
    if not isinstance(entry, dict):  # an earlier change made the section something else
        entries[name] = value = rng.choice(CONFUSED)
        return f"{section} entry {_short(name)} = {_short(value)}"
    if kind == "path":
        path = rng.choice(HOSTILE_PATHS).replace("ABSOLUTE", str(target.place))
        entries[path] = entries.pop(name)
        return f"{section} entry renamed {_short(path)}"
    field, values = {
        "mode": ("mode", HOSTILE_MODES), "size": ("size", HOSTILE_SIZES),
        "digest": ("sha256", HOSTILE_DIGESTS + _other_digests(manifest)),
        "uuid": ("uuid", HOSTILE_DIGESTS + HOSTILE_PATHS),
    }.get(kind, (rng.choice(sorted(entry)), CONFUSED))  # fmt: skip
    if kind == "drop":
        entry.pop(field, None)
        return f"{section} entry without {field}"
    if kind == "extra":
        entry["extra"] = 1
        return f"{section} entry with an extra key"
    entry[field] = value = rng.choice(values)
    return f"{section} entry {field} = {_short(value)}"


def _other_digests(manifest: dict[str, Any]) -> list[str]:
    """Digests the manifest names elsewhere (an object of another size or content)."""
    entries = [
        e
        for section in ("files", "databases", "orthanc")
        if isinstance(manifest.get(section), dict)
        for e in manifest[section].values()
    ]
    return [e["sha256"] for e in entries if isinstance(e, dict) and "sha256" in e][:20]


def mutate_bytes(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    """A file of the repository changed as bytes (it no longer authenticates)."""
    kind = rng.choice(["truncate", "flip", "flip", "nest", "garbage", "empty", "bom"])
    if kind == "truncate":
        cut = rng.randrange(len(raw))
        return raw[:cut], f"cut at {cut} of {len(raw)} bytes"
    if kind == "flip":
        data = bytearray(raw)
        spots = sorted(rng.sample(range(len(data)), rng.choice([1, 1, 2, 8])))
        for spot in spots:
            data[spot] ^= 1 << rng.randrange(8)
        return bytes(data), f"bits flipped at {spots}"
    if kind == "nest":
        depth = rng.choice([1000, 100_000])
        return b"[" * depth + b"]" * depth, f"arrays nested {depth} deep"
    if kind == "garbage":
        return rng.randbytes(rng.choice([1, 100, 5000])), "random bytes"
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw, "a UTF-8 byte order mark first"
    return b"", "empty"


# --------------------------------------------------------------------------- objects


def mutate_object(rng: random.Random, repo: Repository, manifest: dict[str, Any]) -> str:
    """Change one (non-empty) object the manifest names, keeping the manifest."""
    digests = sorted({e["sha256"] for section in ("files", "databases", "orthanc")
                      for e in manifest[section].values() if e["size"]})  # fmt: skip
    chosen = rng.choice(digests)
    victim = repo.object_path(chosen)
    data = victim.read_bytes()
    others = [d for d in digests if d != chosen]
    changes: dict[str, Callable[[], None]] = {
        "flip": lambda: victim.write_bytes(_flipped(rng, data)),
        "truncate": lambda: victim.write_bytes(data[: rng.randrange(len(data))]),
        "append": lambda: victim.write_bytes(data + b"\0"),
        "delete": victim.unlink,
        "symlink out": lambda: _replace(victim, lambda: victim.symlink_to("/etc/hostname")),
        "folder": lambda: _replace(victim, victim.mkdir),
        "fifo": lambda: _replace(victim, lambda: os.mkfifo(victim)),
        "swapped": lambda: victim.write_bytes(
            repo.object_path(rng.choice(others)).read_bytes() if others else data + b"x"),
    }  # fmt: skip
    kind = rng.choice(sorted(changes))
    changes[kind]()
    return f"{kind} {victim.name[:12]} ({len(data)} bytes)"


def _flipped(rng: random.Random, data: bytes) -> bytes:
    changed = bytearray(data)
    changed[rng.randrange(len(changed))] ^= 1 << rng.randrange(8)
    return bytes(changed)


def _replace(path: Path, make: Callable[[], None]) -> None:
    path.unlink()
    make()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} chars)"
