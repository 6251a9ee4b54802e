"""Encrypting a repository from before backups were encrypted, in place and resumably.

Every unencrypted snapshot (``snapshots/<name>.json``) is read as restore reads it
(validated; a signed one authenticated with the backup key), each object it names is
encrypted into ``data/`` (its SHA-256 checked on the way), then its manifest is saved
encrypted under the same name; once all are, the unencrypted files are removed. An
interrupted migration goes on where it stopped when run again: objects already encrypted
and snapshots already saved are skipped, and until the first encrypted snapshot is saved
restore reads the unencrypted ones.

A snapshot from before snapshots were signed is migrated only when allowed: encrypting it
would make a manifest that nothing showed unchanged look as trustworthy as the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.backup.errors import BackupError
from appliance.backup.files import open_plain
from appliance.backup.legacy import LegacyRepository
from appliance.backup.manifest import FORMAT, SECTIONS, signed
from appliance.backup.repository import Repository

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class MigrateResult:
    """What one migration did."""

    snapshots: int  # snapshots encrypted by this run
    objects: int  # objects encrypted by this run
    bytes_encrypted: int


def needs_migration(root: Path) -> bool:
    """Whether ``root`` still holds unencrypted snapshots."""
    return bool(LegacyRepository(root).snapshot_names())


def migrate(
    root: Path, key: bytes, progress: Progress, allow_unsigned: bool = False
) -> MigrateResult:
    """Encrypt the unencrypted snapshots of ``root`` with ``key``, then remove them."""
    repo = Repository(root, key)
    repo.create()
    with repo.locked():
        return migrate_locked(repo, progress, allow_unsigned)


def migrate_locked(repo: Repository, progress: Progress, allow_unsigned: bool) -> MigrateResult:
    """:func:`migrate`, the repository's lock already held."""
    legacy = LegacyRepository(repo.root, repo.key)
    names = legacy.snapshot_names()
    total = _check_all(legacy, names, allow_unsigned)
    done = objects = copied = snapshots = 0
    already = set(repo.snapshot_names())
    for name in reversed(names):  # the newest first: restore reads it soonest
        if name in already:
            continue
        manifest = legacy.manifest(name)
        for sha256, size in _entries(manifest):
            if not repo.has(sha256):
                _encrypt(legacy, repo, sha256, size, name)
                objects, copied = objects + 1, copied + size
            done += 1
            progress(done, total)
        body = {k: v for k, v in manifest.items() if k != "mac"}
        repo.save(name, body | {"format": FORMAT})
        snapshots += 1
    legacy.remove()
    return MigrateResult(snapshots, objects, copied)


def _check_all(legacy: LegacyRepository, names: list[str], allow_unsigned: bool) -> int:
    """Refuse, before anything is encrypted, an invalid, forged or (unless allowed)
    unsigned snapshot; returns the entries to migrate."""
    total, unsigned = 0, []
    for name in names:
        manifest = legacy.manifest(name)  # validated; a signed one authenticated
        if not signed(manifest):
            unsigned.append(name)
        total += sum(1 for _ in _entries(manifest))
    if unsigned and not allow_unsigned:
        raise BackupError(
            f"{legacy.root} holds {len(unsigned)} unsigned snapshots (taken before NeuroNova "
            f"signed its backups: {', '.join(unsigned[:3])}{' ...' if len(unsigned) > 3 else ''}"
            "); nothing shows they were not changed, and once encrypted they would look as "
            "trustworthy as the signed ones. If you trust them, run `neuronova backup "
            f"migrate {legacy.root} --allow-unsigned`; or back up into a new folder."
        )
    return total


def _entries(manifest: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for section in SECTIONS:
        for entry in manifest[section].values():
            yield entry["sha256"], entry["size"]


def _encrypt(legacy: LegacyRepository, repo: Repository, sha256: str, size: int,
             snapshot: str) -> None:  # fmt: skip
    """Encrypt one unencrypted object in, refusing a damaged one."""
    problem = legacy.problem(sha256, size)
    if problem is None:
        with open_plain(legacy.object_path(sha256)) as src:
            stored = repo.put_stream(src)
        if stored.sha256 != sha256:
            problem = f"{legacy.object_path(sha256)}: checksum mismatch"
    if problem:
        raise BackupError(
            f"snapshot {snapshot} cannot be migrated: {problem}. The snapshots migrated so far "
            f"are kept; remove {legacy.snapshots}/{snapshot}.json (and any other snapshot "
            "`neuronova backup verify` names) and run the migration again."
        )
