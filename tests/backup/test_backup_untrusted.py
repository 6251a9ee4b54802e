"""A backup is untrusted input: a tampered snapshot is refused, and nothing is written.

One real appliance holds a small series and is backed up once by ``neuronova backup``;
each test copies that backup, changes it as an attacker with the off-site copy could (one
without the backup key: a flipped, cut, reordered or swapped byte; one with it: a manifest
encrypted again that names paths out of the home, set-uid modes...), and runs the real
``neuronova restore`` (and verify, and prune) on it: each refuses, naming the entry, with
an ``Error:`` line (no traceback), the new home absent and nothing created beside it.
A repository from before backups were encrypted is read, and migrated.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.backup import manifest as manifest_module
from appliance.backup.crypto import CHUNK, HEADER, TAG, encrypted_size
from appliance.backup.errors import BackupError
from appliance.backup.files import create_inside
from appliance.backup.legacy import LegacyRepository
from appliance.backup.manifest import FORMAT, parse
from appliance.backup.migrate import migrate
from appliance.backup.repository import Repository, readable
from appliance.layout import HomeLayout
from bench.synthetic import make_slices, write_series
from tests.support.backups import clear_texts, neuronova, shown_in_clear, unencrypted_copy
from tests.support.running import Appliance, run_cli, running_appliance, wait_stored
from tests.support.running import storescu as send
from tests.support.tools import DCMTK_STORESCU, require_tool

Tamper = Callable[[dict, Repository], str]
"""Changes a manifest (and maybe the repository); returns what the refusal must say."""


@pytest.fixture(scope="module")
def backup(appliance_module: Appliance, tmp_path_factory) -> Path:
    """A real backup of a running appliance holding one small series."""
    require_tool(DCMTK_STORESCU, "dcmtk")
    base = tmp_path_factory.mktemp("untrusted")
    series = write_series(base / "series", make_slices(3))
    assert send(appliance_module, series.files).returncode == 0
    wait_stored(appliance_module, series.sop_uids)
    done = run_cli(appliance_module, "backup", str(base / "backup"))
    assert done.returncode == 0, done.stderr
    return base / "backup"


@pytest.fixture(scope="module")
def appliance_module(tmp_path_factory) -> Iterator[Appliance]:
    """One running appliance for the module (its home is never restored over)."""
    with running_appliance(tmp_path_factory.mktemp("appliance")) as running:
        yield running


def _key_file(appliance: Appliance) -> Path:
    return appliance.settings.layout.backup_key_file


def _key(appliance: Appliance) -> bytes:
    return _key_file(appliance).read_bytes().strip()


def _copy(backup: Path, tmp_path: Path, appliance: Appliance) -> tuple[Repository, Path]:
    """A copy of the backup (opened with the home's key), and its one manifest's path."""
    repo = Repository(shutil.copytree(backup, tmp_path / "backup"), _key(appliance))
    return repo, repo.snapshots / repo.snapshot_names()[-1]


def _manifest(repo: Repository) -> dict:
    return repo.manifest(repo.snapshot_names()[-1])


def _encrypt_again(repo: Repository, manifest: dict) -> None:
    """Save ``manifest`` encrypted with the right key: as if the attacker had the key."""
    repo.save(repo.snapshot_names()[-1], manifest)


def _restore(repo: Repository, home: Path, *extra: str):
    return neuronova("restore", str(repo.root), "--home", str(home), *extra)


def _refused(result, expected: str) -> None:
    """An Error: line (exit 1, no traceback) saying ``expected``."""
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")
    assert expected in result.stderr, result.stderr


def _entry(manifest: dict, section: str) -> tuple[str, dict]:
    return next(iter(manifest[section].items()))


def _nonempty_entry(manifest: dict, section: str) -> tuple[str, dict]:
    """The first entry of ``section`` with at least one byte (a home holds empty files)."""
    return next((name, entry) for name, entry in manifest[section].items() if entry["size"])


def _rename(manifest: dict, new: str) -> None:
    old, _entry_value = _entry(manifest, "files")
    manifest["files"][new] = manifest["files"].pop(old)


def out_of_home(manifest: dict, _repo: Repository) -> str:
    _rename(manifest, "../escaped")
    return "files entry '../escaped': a path with an empty, '.' or '..' component"


def absolute(manifest: dict, repo: Repository) -> str:
    target = str(repo.root.parent / "restore-here" / "absolute")
    _rename(manifest, target)
    return f"files entry {target!r}: an absolute path"


def object_named_by_path(name: str) -> Tamper:
    def tamper(manifest: dict, _repo: Repository) -> str:
        _entry(manifest, "files")[1]["sha256"] = name
        return f"'sha256' is {name!r}, not a SHA-256"

    tamper.__name__ = f"object {name}"
    return tamper


def setuid(manifest: dict, _repo: Repository) -> str:
    rel, entry = _entry(manifest, "files")
    entry["mode"] = 0o4755
    return f"files entry {rel!r}: 'mode' is 0o4755, not permission bits within 0o777"


def size_mismatch(manifest: dict, repo: Repository) -> str:
    rel, entry = _entry(manifest, "files")
    entry["size"] += 1
    stored = encrypted_size(entry["size"] - 1)
    return f"files entry {rel!r}: {repo.object_path(entry['sha256'])}: {stored} bytes, the "


def _flip(victim: Path) -> str:
    """Flip a bit in the middle of the object ``victim``; what a restore says of it."""
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    return f"{victim}: fails its authentication"


def flipped_byte(section: str) -> Tamper:
    def tamper(manifest: dict, repo: Repository) -> str:
        return _flip(repo.object_path(_nonempty_entry(manifest, section)[1]["sha256"]))

    tamper.__name__ = f"flipped byte in {section}"
    return tamper


def flipped_byte_in_a_part(manifest: dict, repo: Repository) -> str:
    """A part of the manifest itself (:mod:`appliance.backup.parts`) changed."""
    return _flip(repo.object_path(manifest["parts"]["files"][0]["sha256"]))


def cut_object(manifest: dict, repo: Repository) -> str:
    """An Orthanc file's object without its last chunk's tag (as a cut copy leaves it)."""
    entry = _nonempty_entry(manifest, "orthanc")[1]
    victim = repo.object_path(entry["sha256"])
    victim.write_bytes(victim.read_bytes()[:-TAG])
    return f"{victim}: {encrypted_size(entry['size']) - TAG} bytes, the manifest's"


TAMPERINGS = [
    out_of_home,
    absolute,
    object_named_by_path("/etc/passwd"),
    object_named_by_path("../../../../etc/passwd"),
    setuid,
    size_mismatch,
    flipped_byte("files"),
    flipped_byte("orthanc"),
    flipped_byte("databases"),
    flipped_byte_in_a_part,
    cut_object,
]


@pytest.mark.slow
@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda tamper: tamper.__name__)
def test_a_tampered_snapshot_is_refused_and_nothing_written(
    appliance_module: Appliance, backup: Path, tmp_path: Path, tamper: Tamper
) -> None:
    """Even encrypted again with the right key, each tampering is refused."""
    repo, _manifest_file = _copy(backup, tmp_path, appliance_module)
    manifest = _manifest(repo)
    expected = tamper(manifest, repo)
    _encrypt_again(repo, manifest)
    beside = tmp_path / "restore-here"
    beside.mkdir()
    restored = _restore(repo, beside / "home", "--key-file", str(_key_file(appliance_module)))
    _refused(restored, expected)
    assert os.listdir(beside) == []  # no home, nothing beside it (../escaped, absolute)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "restore-here"]


@pytest.mark.slow
def test_verify_and_prune_refuse_a_tampered_manifest(
    appliance_module: Appliance, backup: Path, home: Path, tmp_path: Path
) -> None:
    repo, manifest_file = _copy(backup, tmp_path, appliance_module)
    manifest = _manifest(repo)
    _rename(manifest, "../escaped")
    _encrypt_again(repo, manifest)
    objects = set(repo.stored_names())
    key = str(_key_file(appliance_module))
    verified = neuronova("backup", "verify", str(repo.root), "--key-file", key)
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    assert "files entry '../escaped'" in verified.stderr
    home_key = HomeLayout(home).backup_key_file
    home_key.write_bytes(_key_file(appliance_module).read_bytes())  # prune with the right key
    pruned = neuronova("backup", "prune", str(repo.root), "--keep-daily", "1",
                       "--home", str(home))  # fmt: skip
    assert pruned.returncode == 1 and "Traceback" not in pruned.stderr
    assert "files entry '../escaped'" in pruned.stderr.splitlines()[-1]
    assert set(repo.stored_names()) == objects and manifest_file.exists()


@pytest.mark.slow
def test_a_restore_that_fails_midway_leaves_an_empty_home_empty(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    repo, _manifest_file = _copy(backup, tmp_path, appliance_module)
    expected = flipped_byte("orthanc")(_manifest(repo), repo)
    home = tmp_path / "empty-home"
    home.mkdir()
    _refused(_restore(repo, home, "--key-file", str(_key_file(appliance_module))), expected)
    assert home.is_dir() and os.listdir(home) == []


# ------------------------------------------------------------------ encrypted snapshots


def test_a_backup_never_holds_its_key_nor_shows_anything(
    appliance_module: Appliance, backup: Path
) -> None:
    manifest = Repository(backup, _key(appliance_module)).latest()
    assert manifest is not None and manifest["format"] == FORMAT and "mac" not in manifest
    assert manifest["parts"]["files"]  # saved in parts
    assert "secrets/backup-key" not in manifest["files"]
    assert "secrets/jwt-signing.key" in manifest["files"]
    assert stat.S_IMODE(_key_file(appliance_module).stat().st_mode) == 0o600
    assert shown_in_clear(backup, clear_texts(appliance_module.settings.home)) == []


@pytest.mark.slow
def test_a_changed_manifest_or_another_key_is_refused(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    repo, manifest_file = _copy(backup, tmp_path, appliance_module)
    key = ["--key-file", str(_key_file(appliance_module))]
    other = tmp_path / "other-key"
    other.write_text(secrets.token_urlsafe(32))
    _refused(_restore(repo, tmp_path / "new", "--key-file", str(other)),
             "was encrypted with another backup key than the one given")  # fmt: skip
    _refused(_restore(repo, tmp_path / "new"), "is encrypted: give the backup key")
    renamed = manifest_file.with_name("99991231T000000000000Z")  # now the newest
    shutil.copy(manifest_file, renamed)
    _refused(_restore(repo, tmp_path / "new", *key),
             f"snapshot {renamed.name}: fails its authentication")  # fmt: skip
    renamed.unlink()
    raw = bytearray(manifest_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    manifest_file.write_bytes(bytes(raw))
    _refused(_restore(repo, tmp_path / "new", *key),
             f"snapshot {manifest_file.name}: fails its authentication")  # fmt: skip
    verified = neuronova("backup", "verify", str(repo.root), *key)
    assert verified.returncode == 1 and "fails its authentication" in verified.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "other-key"]


def test_a_cut_reordered_or_mixed_object_is_refused(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    """Chunks of an object (4 of them here) cannot be cut, dropped, moved, added or mixed
    with another object's, even where the size would not tell."""
    repo, _manifest_file = _copy(backup, tmp_path, appliance_module)
    contents = []
    for name in ("one", "two"):
        (tmp_path / name).write_bytes(os.urandom(3 * CHUNK + 5))
        contents.append(repo.put(tmp_path / name))
    repo.sync()  # named once on disk
    path, other = (repo.object_path(stored.sha256) for stored in contents)
    whole, step = path.read_bytes(), CHUNK + TAG
    head, chunks = whole[:HEADER], [whole[HEADER + i * step : HEADER + (i + 1) * step]
                                    for i in range(4)]  # fmt: skip
    foreign = other.read_bytes()[HEADER + step : HEADER + 2 * step]
    cases = {
        "cut at a chunk's end": whole[: HEADER + 3 * step],
        "cut inside a chunk": whole[:-1],
        "two chunks swapped": head + chunks[1] + chunks[0] + chunks[2] + chunks[3],
        "a chunk dropped": head + chunks[0] + chunks[2] + chunks[3],
        "a chunk repeated": whole + chunks[3],
        "another object's chunk": head + chunks[0] + foreign + chunks[2] + chunks[3],
        "another object's header": other.read_bytes()[:HEADER] + whole[HEADER:],
    }
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(BackupError, match="fails its authentication"):
            repo.copy_to(contents[0].sha256, None)
        assert repo.check(contents[0].sha256, contents[0].size), what
    path.write_bytes(other.read_bytes())  # a whole object of the repository, of the same size
    assert "checksum mismatch" in repo.check(contents[0].sha256, contents[0].size)
    path.write_bytes(whole)
    assert repo.check(contents[0].sha256, contents[0].size) is None


# ------------------------------------------------------------------ before encryption


@pytest.mark.slow
def test_an_unencrypted_backup_is_restored_then_migrated_by_the_next_backup(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    key, key_file = _key(appliance_module), str(_key_file(appliance_module))
    legacy = unencrypted_copy(Repository(backup, key), tmp_path / "old", key)
    texts = clear_texts(appliance_module.settings.home)
    assert len(shown_in_clear(legacy.root, texts)) >= 4  # what the check is for
    before = _restore(legacy, tmp_path / "from-old", "--key-file", key_file)
    assert before.returncode == 0, before.stderr
    assert "Warning" not in before.stderr  # signed, and checked with its key

    def interrupt(done: int, _total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt  # as a migration stopped midway

    with pytest.raises(KeyboardInterrupt):
        migrate(legacy.root, key, interrupt)
    assert isinstance(readable(legacy.root, key), LegacyRepository)  # still read as it was
    home = ["--home", str(appliance_module.settings.home)]
    backed = neuronova("backup", str(legacy.root), *home)  # migrates, then a new snapshot
    assert backed.returncode == 0, backed.stderr
    repo = Repository(legacy.root, key)
    assert len(repo.snapshot_names()) == 2 and legacy.snapshot_names() == []
    assert not legacy.objects.exists() and not legacy.snapshots.exists()
    assert shown_in_clear(legacy.root, texts) == []
    verified = neuronova("backup", "verify", str(legacy.root), "--key-file", key_file)
    assert verified.returncode == 0, verified.stderr
    after = _restore(repo, tmp_path / "from-migrated", "--key-file", key_file)
    assert after.returncode == 0, after.stderr
    assert _orthanc_files(tmp_path / "from-migrated") == _orthanc_files(tmp_path / "from-old")


def _orthanc_files(home: Path) -> set[str]:
    storage = HomeLayout(home).orthanc_dir / "storage"
    files = {hashlib.sha256(p.read_bytes()).hexdigest() for p in storage.rglob("*") if p.is_file()}
    assert files
    return files


@pytest.mark.slow
def test_an_unsigned_snapshot_is_restored_or_migrated_only_when_allowed(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    key = _key(appliance_module)
    legacy = unencrypted_copy(Repository(backup, key), tmp_path / "old", None)
    name = legacy.snapshot_names()[-1]
    _refused(_restore(legacy, tmp_path / "new"), "restore it with --allow-unsigned")
    assert not (tmp_path / "new").exists()
    restored = _restore(legacy, tmp_path / "new", "--allow-unsigned")
    assert restored.returncode == 0, restored.stderr
    assert f"Warning: snapshot {name} is not signed" in restored.stderr
    assert (tmp_path / "new" / "neuronova.toml").is_file()
    home = ["--home", str(appliance_module.settings.home)]
    for command in (["backup", str(legacy.root)], ["backup", "migrate", str(legacy.root)]):
        _refused(neuronova(*command, *home), "--allow-unsigned`")
    assert legacy.snapshot_names() == [name] and not Repository(legacy.root).snapshot_names()
    migrated = neuronova("backup", "migrate", str(legacy.root), "--allow-unsigned", *home)
    assert migrated.returncode == 0, migrated.stderr
    assert "Encrypted 1 snapshots" in migrated.stdout
    assert Repository(legacy.root, key).snapshot_names() == [name]
    assert shown_in_clear(legacy.root, clear_texts(appliance_module.settings.home)) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["a", "a/b"], "files entry 'a': would be both a file and a folder"),
        (["secrets"], "files entry 'secrets': would be both a file and a folder"),
        (["orthanc/storage/x"], "inside orthanc/, which a backup never holds"),
        (["secrets/backup-key"], "the backup key, which no backup holds"),
        (["frames//x"], "an empty, '.' or '..' component"),
        (["frames/./x"], "an empty, '.' or '..' component"),
        (["a\0b"], "hold no NUL"),
    ],
)
def test_paths_a_restore_never_writes(files: list[str], expected: str) -> None:
    entry = {"sha256": "0" * 64, "size": 1, "mtime_ns": 0, "mode": 0o600}
    raw = json.dumps({"format": 1, "name": "x", "files": dict.fromkeys(files, entry),
                      "databases": {}, "orthanc": {}})  # fmt: skip
    with pytest.raises(BackupError, match="refused") as refused:
        parse(raw.encode(), "x")
    assert expected in str(refused.value)


def test_a_manifest_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 100)
    raw = json.dumps({"format": 1, "name": "x", "files": {}, "databases": {},
                      "orthanc": {}, "home": "h" * 100}).encode()  # fmt: skip
    with pytest.raises(BackupError, match="manifest larger than 100 bytes"):
        parse(raw, "x")


def test_no_symbolic_link_is_followed_out_of_the_home(tmp_path: Path) -> None:
    home, outside = tmp_path / "home", tmp_path / "outside"
    home.mkdir()
    outside.mkdir()
    (home / "frames").symlink_to(outside)
    with pytest.raises(OSError):
        create_inside(home, "frames/planted", 0o600)
    (home / "secret").symlink_to(outside / "file")
    with pytest.raises(OSError):
        create_inside(home, "secret", 0o600)
    assert os.listdir(outside) == []
