"""Objects are made durable together (:meth:`Repository.sync`): none is found under its
name before its content is flushed, and what an interrupted backup left goes at the next
prune."""

from __future__ import annotations

import io
from pathlib import Path

from appliance.backup import repository
from appliance.backup.repository import Repository


def _repo(tmp_path: Path) -> Repository:
    repo = Repository(tmp_path / "repo", b"k" * 43)
    repo.create()
    return repo


def test_objects_are_named_once_synced_and_a_manifest_syncs_them(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    stored = repo.put_stream(io.BytesIO(b"content"))
    assert repo.has(stored.sha256) and stored.copied == stored.size
    assert not repo.object_path(stored.sha256).exists()  # not named before it is on disk
    again = repo.put_stream(io.BytesIO(b"content"))
    assert again.copied == 0  # kept once, synced or not
    repo.save("20260101T000000000000Z", {"format": 3, "name": "20260101T000000000000Z",
                                          "files": {}, "databases": {}, "orthanc": {}})  # fmt: skip
    assert repo.object_path(stored.sha256).is_file()
    assert repo.read(stored.sha256) == b"content"


def test_a_large_backup_syncs_as_it_goes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(repository, "SYNC_EVERY", 3)
    repo = _repo(tmp_path)
    first = [repo.put_stream(io.BytesIO(f"object {i}".encode())) for i in range(3)]
    assert all(repo.object_path(s.sha256).is_file() for s in first)


def test_an_interrupted_backup_leaves_nothing_a_prune_keeps(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    repo.put_stream(io.BytesIO(b"never synced"))  # the backup stops here
    left = list(repo.objects.glob(".incoming-*"))
    assert len(left) == 1 and list(repo.stored_names()) == []
    again = Repository(repo.root, b"k" * 43)
    with again.locked():
        again.remove_leftovers()
    assert list(repo.objects.iterdir()) == []
