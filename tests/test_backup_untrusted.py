"""A backup is untrusted input: a tampered snapshot is refused, and nothing is written.

One real appliance holds a small series and is backed up once by ``neuronova backup``;
each test copies that backup, changes it as an attacker with the off-site copy could, and
runs the real ``neuronova restore`` (and verify, and prune) on it: each refuses, naming the
entry, with an ``Error:`` line (no traceback), the new home absent and nothing created
beside it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import (
    DCMTK_STORESCU,
    Appliance,
    make_appliance,
    require_tool,
    run_cli,
    wait_stored,
)
from conftest import storescu as send
from test_backup import neuronova

from appliance.backup import manifest as manifest_module
from appliance.backup.errors import BackupError
from appliance.backup.manifest import parse, sign, signed
from appliance.backup.repository import Repository, create_inside
from appliance.layout import HomeLayout
from bench.synthetic import make_slices, write_series

Tamper = Callable[[dict, Path], str]
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
    running = make_appliance(tmp_path_factory.mktemp("appliance")).start()
    yield running
    running.stop()


def _copy(backup: Path, tmp_path: Path) -> tuple[Repository, Path]:
    """A copy of the backup, and its one manifest's path."""
    repo = Repository(shutil.copytree(backup, tmp_path / "backup"))
    return repo, repo.snapshots / f"{repo.snapshot_names()[-1]}.json"


def _key_file(appliance: Appliance) -> Path:
    return HomeLayout(appliance.settings.home).backup_key_file


def _resign(manifest: dict, appliance: Appliance) -> dict:
    """``manifest`` signed again with the home's own key: as if the attacker had it."""
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return sign(body, _key_file(appliance).read_bytes().strip())


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


def out_of_home(manifest: dict, _root: Path) -> str:
    _rename(manifest, "../escaped")
    return "files entry '../escaped': a path with an empty, '.' or '..' component"


def absolute(manifest: dict, root: Path) -> str:
    target = str(root.parent / "restore-here" / "absolute")
    _rename(manifest, target)
    return f"files entry {target!r}: an absolute path"


def object_named_by_path(name: str) -> Tamper:
    def tamper(manifest: dict, _root: Path) -> str:
        _entry(manifest, "files")[1]["sha256"] = name
        return f"'sha256' is {name!r}, not a SHA-256"

    tamper.__name__ = f"object {name}"
    return tamper


def setuid(manifest: dict, _root: Path) -> str:
    rel, entry = _entry(manifest, "files")
    entry["mode"] = 0o4755
    return f"files entry {rel!r}: 'mode' is 0o4755, not permission bits within 0o777"


def size_mismatch(manifest: dict, _root: Path) -> str:
    rel, entry = _entry(manifest, "files")
    entry["size"] += 1
    return f"files entry {rel!r}: {_object(_root, entry)}: {entry['size'] - 1} bytes, the "


def _object(root: Path, entry: dict) -> Path:
    return Repository(root).object_path(entry["sha256"])


def flipped_byte(section: str) -> Tamper:
    def tamper(manifest: dict, root: Path) -> str:
        victim = _object(root, _nonempty_entry(manifest, section)[1])
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
        return f"{victim}: checksum mismatch"

    tamper.__name__ = f"flipped byte in {section}"
    return tamper


TAMPERINGS = [
    out_of_home,
    absolute,
    object_named_by_path("/etc/passwd"),
    object_named_by_path("../../../../etc/passwd"),
    setuid,
    size_mismatch,
    flipped_byte("files"),
    flipped_byte("orthanc"),
]


@pytest.mark.slow
@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda tamper: tamper.__name__)
def test_a_tampered_snapshot_is_refused_and_nothing_written(
    appliance_module: Appliance, backup: Path, tmp_path: Path, tamper: Tamper
) -> None:
    """Even signed again with the right key, each tampering is refused."""
    repo, manifest_file = _copy(backup, tmp_path)
    manifest = json.loads(manifest_file.read_text())
    expected = tamper(manifest, repo.root)
    manifest_file.write_text(json.dumps(_resign(manifest, appliance_module)))
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
    repo, manifest_file = _copy(backup, tmp_path)
    manifest = json.loads(manifest_file.read_text())
    _rename(manifest, "../escaped")
    manifest_file.write_text(json.dumps(_resign(manifest, appliance_module)))
    objects = set(repo.object_names())
    verified = neuronova("backup", "verify", str(repo.root))
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    assert "files entry '../escaped'" in verified.stderr
    pruned = neuronova("backup", "prune", str(repo.root), "--keep-daily", "1",
                       "--home", str(home))  # fmt: skip
    assert pruned.returncode == 1 and "Traceback" not in pruned.stderr
    assert "files entry '../escaped'" in pruned.stderr.splitlines()[-1]
    assert set(repo.object_names()) == objects and manifest_file.exists()


@pytest.mark.slow
def test_a_restore_that_fails_midway_leaves_an_empty_home_empty(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    repo, manifest_file = _copy(backup, tmp_path)
    expected = flipped_byte("orthanc")(json.loads(manifest_file.read_text()), repo.root)
    home = tmp_path / "empty-home"
    home.mkdir()
    _refused(_restore(repo, home, "--key-file", str(_key_file(appliance_module))), expected)
    assert home.is_dir() and os.listdir(home) == []


# ------------------------------------------------------------------ signed snapshots


def test_a_backup_never_holds_its_key(appliance_module: Appliance, backup: Path) -> None:
    manifest = Repository(backup).latest()
    assert manifest is not None and signed(manifest)
    assert "secrets/backup-key" not in manifest["files"]
    assert "secrets/jwt-signing.key" in manifest["files"]
    assert stat.S_IMODE(_key_file(appliance_module).stat().st_mode) == 0o600


@pytest.mark.slow
def test_a_changed_manifest_or_another_key_is_refused(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    repo, manifest_file = _copy(backup, tmp_path)
    key = ["--key-file", str(_key_file(appliance_module))]
    other = tmp_path / "other-key"
    other.write_text(secrets.token_urlsafe(32))
    _refused(_restore(repo, tmp_path / "new", "--key-file", str(other)),
             "signed with another backup key than the one given")  # fmt: skip
    _refused(_restore(repo, tmp_path / "new"), "is signed: give the backup key")
    renamed = manifest_file.with_name("99991231T000000000000Z.json")  # now the newest
    shutil.copy(manifest_file, renamed)
    _refused(_restore(repo, tmp_path / "new", *key), "it was signed as")
    renamed.unlink()
    raw = manifest_file.read_text()
    digest = _entry(json.loads(raw), "files")[1]["sha256"]
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")  # one byte, still valid
    manifest_file.write_text(raw.replace(digest, flipped, 1))
    _refused(_restore(repo, tmp_path / "new", *key), "its manifest was changed")
    verified = neuronova("backup", "verify", str(repo.root), *key)
    assert verified.returncode == 1 and "its manifest was changed" in verified.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "other-key"]


@pytest.mark.slow
def test_an_unsigned_snapshot_is_restored_only_when_allowed(
    appliance_module: Appliance, backup: Path, tmp_path: Path
) -> None:
    repo, manifest_file = _copy(backup, tmp_path)
    manifest = json.loads(manifest_file.read_text())
    del manifest["mac"]  # as every snapshot taken before they were signed
    manifest_file.write_text(json.dumps(manifest))
    _refused(_restore(repo, tmp_path / "new"), "restore it with --allow-unsigned")
    assert not (tmp_path / "new").exists()
    restored = _restore(repo, tmp_path / "new", "--allow-unsigned")
    assert restored.returncode == 0, restored.stderr
    assert f"Warning: snapshot {manifest['name']} is not signed" in restored.stderr
    assert (tmp_path / "new" / "neuronova.toml").is_file()


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
