"""A manifest saved in parts (:mod:`appliance.backup.parts`): what a snapshot writes for its
manifest grows with what changed, not with the archive, and reads back as it was."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.backup.crypto import manifest_domain
from appliance.backup.errors import BackupError
from appliance.backup.manifest import FORMAT
from appliance.backup.patch import Section, Spans, appended, subtree
from appliance.backup.repository import Repository

DIGEST = "ab" * 32
UUID = "12345678-1234-1234-1234-123456789abc"


def _archive(instances: int, seed: str = "1") -> dict[str, Any]:
    """A manifest shaped like a home's: five files and two folders per instance, 50
    studies (``seed``: another 50)."""
    files, folders, orthanc = {}, {}, {}
    for i in range(instances):
        study = f"{seed}.{i % 50}"
        sop = f"frames/{study}/{study}.1/1.{i}"
        for name in ("frames/1", "rendered.jpg", "thumbnail.jpg", "a", "b"):
            files[f"{sop}/{name}"] = {"sha256": DIGEST, "size": i, "mtime_ns": i, "mode": 0o640}
        folders[sop] = folders[f"{sop}/frames"] = i
        orthanc_id = f"{i:08x}-{seed}0000000-00000000-00000000-00000000"
        orthanc[orthanc_id] = {"uuid": UUID, "sha256": DIGEST, "size": i}
    return {"format": FORMAT, "name": "20260101T000000000000Z", "files": files, "folders": folders,
            "orthanc": orthanc, "databases": {}}  # fmt: skip


def _repo(tmp_path: Path) -> Repository:
    repo = Repository(tmp_path / "repo", b"k" * 43)
    repo.create()
    return repo


def _day(manifest: dict[str, Any], new: int, name: str) -> dict[str, Any]:
    """The manifest after a day of ``new`` instances (two new studies) and one file
    rewritten."""
    later = _archive(new, seed="2")  # in studies 2.0 and 2.1 (fewer than 50 instances)
    day = {**manifest, "name": name}
    for section in ("files", "folders", "orthanc"):
        day[section] = {**manifest[section], **later[section]}
    rewritten = next(iter(day["files"]))
    day["files"][rewritten] = {**day["files"][rewritten], "size": 1}
    return day


def test_a_day_writes_the_parts_it_changed_at_n_and_2n(tmp_path: Path) -> None:
    written = []
    for size in (5000, 10000):
        repo = _repo(tmp_path / str(size))
        whole = _archive(size)
        first = repo.save("20260101T000000000000Z", whole)
        day = _day(whole, 2, "20260102T000000000000Z")
        then = repo.save("20260102T000000000000Z", day)
        nothing = repo.save("20260103T000000000000Z", day | {"name": "20260103T000000000000Z"})
        read = repo.manifest("20260102T000000000000Z")
        assert {k: v for k, v in read.items() if k != "parts"} == day
        assert list(read["orthanc"]) == list(day["orthanc"])  # the order instances came in
        written.append((first, then, nothing))
    (first_n, day_n, nothing_n), (first_2n, day_2n, nothing_2n) = written
    assert first_2n > 1.8 * first_n  # a whole manifest grows with the archive...
    assert day_n < first_n / 10 and day_2n < 1.5 * day_n, written  # ...a day's parts do not
    # the list of parts: about a 1/256th of the entries
    assert nothing_n < first_n / 100 and nothing_2n < first_2n / 100, written


def test_an_entry_in_two_parts_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    repo.save("20260101T000000000000Z", _archive(300))
    top = _top(repo, "20260101T000000000000Z")
    top["parts"]["files"].append(top["parts"]["files"][0])
    _seal(repo, "20260101T000000000000Z", top)
    with pytest.raises(BackupError, match="a files entry is in two parts"):
        repo.manifest("20260101T000000000000Z")


def _top(repo: Repository, name: str) -> dict[str, Any]:
    plain = io.BytesIO()
    sealed = (repo.snapshots / name).read_bytes()
    repo.keys.decrypt(io.BytesIO(sealed), plain, name, manifest_domain(name))
    return json.loads(plain.getvalue())


def _seal(repo: Repository, name: str, top: dict[str, Any]) -> None:
    """Save ``top`` as the manifest, encrypted with the right key (as if by the key's holder)."""
    sealed = io.BytesIO()
    repo.keys.encrypt(io.BytesIO(json.dumps(top).encode()), sealed, manifest_domain(name))
    (repo.snapshots / name).write_bytes(sealed.getvalue())


def test_a_day_reads_and_writes_only_the_parts_it_changed_at_n_and_4n(tmp_path: Path) -> None:
    """Two new studies patched into a saved manifest (:mod:`appliance.backup.patch`): the
    parts read and the bytes written are about the same at n and 4n, and the manifest read
    back is the whole one with the new entries."""
    first, second = "20260101T000000000000Z", "20260102T000000000000Z"
    costs = []
    for size in (2000, 8000):
        repo = _repo(tmp_path / str(size))
        whole = _archive(size)
        repo.save(first, whole)
        top = repo.latest_top()
        assert top is not None and all("first" in r for refs in top["parts"].values() for r in refs)
        later = _archive(2, seed="2")  # studies 2.0 and 2.1
        changed = Spans([span for rel in ("frames/2.0", "frames/2.1") for span in subtree(rel)])
        written, bytes_read = _patch(repo, top, later, changed, second)
        read_back = repo.manifest(second)
        for section in ("files", "folders", "orthanc"):
            assert read_back[section] == whole[section] | later[section]
        assert list(read_back["orthanc"]) == [*whole["orthanc"], *later["orthanc"]]
        whole_size = sum(r["size"] for refs in top["parts"].values() for r in refs)
        costs.append((bytes_read, written, whole_size))
    (read_n, written_n, whole_n), (read_4n, written_4n, whole_4n) = costs
    assert whole_4n > 3.5 * whole_n, costs  # the manifest grows with the archive...
    assert read_4n < 1.5 * read_n and written_4n < 1.5 * written_n, costs  # ...a day does not
    assert read_4n < whole_4n / 20, costs


def _patch(
    repo: Repository, top: dict[str, Any], new: dict[str, Any], changed: Spans, name: str
) -> tuple[int, int]:
    """Save snapshot ``name``: ``top``'s with the ``new`` entries, in ``changed``; (bytes
    written, bytes of parts read)."""

    def read(ref: dict[str, Any], section: str) -> dict[str, Any]:
        return repo.part_entries(ref, section, top["name"])

    files, folders = (Section(s, top["parts"][s], read) for s in ("files", "folders"))
    assert files.entries_in(changed) == {} and folders.entries_in(changed) == {}  # all new
    day = {"format": FORMAT, "name": name, "databases": {},
           "files": lambda p: files.patched(changed, new["files"], p),
           "folders": lambda p: folders.patched(changed, new["folders"], p),
           "orthanc": lambda p: appended(top["parts"]["orthanc"], read, new["orthanc"],
                                         p)}  # fmt: skip
    written = repo.save(name, day)
    return written, files.bytes_read + folders.bytes_read


def test_a_part_out_of_its_place_is_refused(tmp_path: Path) -> None:
    """A part whose reference names another first key than it holds, or parts out of path
    order, are refused before anything is patched."""
    repo = _repo(tmp_path)
    repo.save("20260101T000000000000Z", _archive(300))
    top = repo.latest_top()
    assert top is not None
    refs = top["parts"]["files"]

    def read(ref: dict[str, Any], section: str) -> dict[str, Any]:
        return repo.part_entries(ref, section, "20260101T000000000000Z")

    with pytest.raises(BackupError, match="not in path order"):
        Section("files", [refs[1], refs[0], *refs[2:]], read)
    moved = [refs[0], {**refs[1], "first": refs[1]["first"] + "0"}, *refs[2:]]
    with pytest.raises(BackupError, match="not the one its reference describes"):
        Section("files", moved, read).entries_in(Spans([("", None)]))
