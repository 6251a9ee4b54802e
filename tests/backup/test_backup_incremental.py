"""An incremental backup costs what changed, not what is stored (issue 20).

A real Orthanc runs on an initialised home; instances go in through its REST API, each
journaled and with the frame files and previews the pipeline would write (atomically, as
it does). Backups run through a counting proxy in front of Orthanc, so the REST calls are
counted from outside the backup's code. The same new work costs the same calls, files
examined and folders checked whether the archive holds n or 2n instances, and so does a
backup with nothing new; after stores, a replacement and deletions, an incremental chain
ends with the manifest a full run makes.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from appliance import loopback
from appliance.backup import frames_changes, home_files
from appliance.backup.home_files import walk_home
from appliance.backup.manifest import backup_key
from appliance.backup.repository import Repository
from appliance.backup.snapshot import SnapshotResult, take_snapshot
from appliance.cli.backup_cmd import orthanc_alone
from appliance.config import Settings, load_settings
from appliance.db import now_iso, open_database
from appliance.durable import write_atomic
from appliance.ingest.header import describe
from appliance.ingest.journal import Journal
from appliance.store.frame_files import frame_relpath, image_relpath, remove_study_files
from appliance.store.orthanc import OrthancStore, orthanc_auth_header, orthanc_url
from bench.counting_proxy import CountingProxy
from bench.synthetic import SeriesSpec, StudySpec, small_dataset, small_image
from tests.support.ports import reserve_port

N = 40  # instances stored before the first measure; 2N before the second
NEW = 8  # the day's new instances, each time


@pytest.fixture
def settings(home: Path) -> Iterator[Settings]:
    """Settings of an initialised home whose Orthanc runs alone on a free port."""
    settings = load_settings(home, {"internal.orthanc_port": reserve_port()})
    with orthanc_alone(settings):
        yield settings


def study(settings: Settings, count: int, seed: int) -> list[tuple[str, str, str, str]]:
    """Store a study of ``count`` instances in Orthanc with its frame files and previews;
    (Orthanc ID, study, series, SOP UID) of each."""
    spec = StudySpec("INCR^TEST", f"P{seed}", "19700101", "O", generate_uid(), "20261207",
                     "120000", f"A{seed}", "incremental backup test")  # fmt: skip
    series = SeriesSpec(generate_uid(), "CT", 1, "axial", count, 16, 16)
    rng = np.random.default_rng(seed)
    return [_store(settings, spec, series, i, small_image(series, i, rng)) for i in range(count)]


def _store(settings: Settings, spec: StudySpec, series: SeriesSpec, index: int, pixels) -> tuple:
    ds = small_dataset(spec, series, index, generate_uid(), pixels)
    data = _part10(ds)
    orthanc_id = ingest(settings, ds, data)
    return orthanc_id, spec.study_uid, series.series_uid, ds.SOPInstanceUID


def ingest(settings: Settings, ds: pydicom.Dataset, data: bytes) -> str:
    """Journal, write the frame files of and store one instance, in the pipeline's order
    (received, claimed, files written, stored in Orthanc, stored with its previews)."""
    journal = Journal(settings.layout.database_file)
    spool = f"{ds.SOPInstanceUID}.dcm"
    assert journal.record_received(ds, describe(ds), spool, "TEST", len(data)) is None
    assert journal.claim(ds.SOPInstanceUID, spool)
    _write_frames(settings, ds, data)
    orthanc_id = OrthancStore(settings).store(data)
    assert journal.stored(ds.SOPInstanceUID, spool, frames=1, images_at=now_iso())
    journal.db.close()
    return orthanc_id


def _part10(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _write_frames(settings: Settings, ds: pydicom.Dataset, data: bytes) -> None:
    """The instance's frame file and previews, written as the pipeline writes them."""
    root = settings.layout.frames_dir
    uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    for rel in (frame_relpath(*uids, 1), image_relpath(*uids, "rendered"),
                image_relpath(*uids, "thumbnail")):  # fmt: skip
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(root / rel, data[-2000:])


def backup(settings: Settings, dest: Path) -> tuple[SnapshotResult, dict[str, Any]]:
    """A snapshot through a counting proxy: its result and the proxy's counts."""
    with CountingProxy(settings.internal.orthanc_port) as proxy:
        seen = settings.with_values({"internal.orthanc_port": proxy.port})
        result = take_snapshot(seen, dest, lambda _done, _total: None)
        return result, proxy.summary()


def rest(settings: Settings, method: str, path: str) -> None:
    """One call of Orthanc's REST API the appliance itself does not make."""
    request = urllib.request.Request(
        orthanc_url(settings) + path,
        method=method,
        headers={"Authorization": orthanc_auth_header(settings)},
    )
    with loopback.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


def manifest(settings: Settings, dest: Path) -> dict[str, Any]:
    """The newest snapshot's manifest in ``dest``."""
    found = Repository(dest, backup_key(settings.layout)).latest()
    assert found is not None
    return found


def test_the_same_new_work_costs_the_same_at_n_and_2n(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Folders count as settled at once and the journal's times as exact (the test writes
    # nothing while a backup runs), so what was stored before a backup is not looked at
    # again after it.
    monkeypatch.setattr(home_files, "SETTLE_NS", 0)
    monkeypatch.setattr(frames_changes, "MARGIN", timedelta(0))
    dest, costs, idle, stored = tmp_path / "backup", [], [], 0
    for size in (N, 2 * N):
        while stored < size:
            stored += len(study(settings, N // 2, seed=stored))
        _next_second()  # the journal's times are in seconds
        backup(settings, dest)  # what was stored so far
        stored += len(study(settings, NEW, seed=size + 1))
        _next_second()
        result, calls = backup(settings, dest)
        assert result.work.orthanc_listing == "", result.work
        assert not result.work.full_walk
        assert result.instances == stored
        costs.append((calls["total"], result.work.orthanc_asked, result.work.files_examined,
                      result.work.folders_checked))  # fmt: skip
        nothing, calls = backup(settings, dest)
        idle.append((calls["total"], nothing.work.files_examined, nothing.work.folders_checked))
    small, large = costs
    assert small == large, f"the same {NEW} new instances cost {small} at {N}, {large} at 2N"
    calls, asked, examined, folders = small
    assert asked == NEW
    assert calls <= NEW + 8, f"{calls} REST calls for {NEW} new instances"
    top = sum(1 for p in settings.home.iterdir() if p.is_file())  # always looked at
    assert examined == 3 * NEW + top, f"{examined} files examined for {NEW} new instances"
    fixed = idle[0][2]  # the folders outside the frames' and frames/ itself
    assert folders == fixed + 2 + 2 * NEW, f"{folders} folders for a study of {NEW} instances"
    assert idle[0] == idle[1], f"nothing new cost {idle[0]} at {N}, {idle[1]} at 2N"
    assert idle[0][1] == top and fixed < 12, f"nothing new cost {idle[0]}"


def _next_second() -> None:
    """Wait for the clock's next second (the journal keeps seconds)."""
    second = datetime.now(UTC).replace(microsecond=0)
    while datetime.now(UTC).replace(microsecond=0) == second:
        time.sleep(0.05)


def test_an_incremental_chain_ends_as_a_full_run(settings: Settings, tmp_path: Path):
    first = study(settings, 5, seed=1)
    second = study(settings, 6, seed=2)
    chain = tmp_path / "chain"
    backup(settings, chain)
    study(settings, 4, seed=3)
    orthanc = OrthancStore(settings)
    replaced_id, *uids = second[0]  # a replacement: same SOP Instance UID, other content
    ds = pydicom.dcmread(io.BytesIO(orthanc.fetch(uids[2])))
    ds.SeriesDescription = "replaced"
    assert ingest(settings, ds, _part10(ds)) == replaced_id
    rest(settings, "DELETE", f"/instances/{second[1][0]}")  # one instance
    assert orthanc.delete_study(first[0][1])  # and a whole study, as retention does
    remove_study_files(settings.layout.frames_dir, first[0][1])
    result, _calls = backup(settings, chain)
    assert result.work.orthanc_listing == "" and result.work.orthanc_deleted == 6
    assert result.work.orthanc_asked == 4 + 1  # the new study and the replaced instance
    full_result, _calls = backup(settings, tmp_path / "full")
    assert full_result.work.orthanc_listing == "first snapshot" and full_result.work.full_walk
    _same_content(manifest(settings, chain), manifest(settings, tmp_path / "full"))


def test_a_reset_orthanc_gets_a_full_listing(settings: Settings, tmp_path: Path):
    """Orthanc's database replaced (its log restarts): the next snapshot lists everything,
    says why, and is what a full run makes."""
    study(settings, 5, seed=1)
    chain = tmp_path / "chain"
    backup(settings, chain)
    for orthanc_id in OrthancStore(settings).instance_ids():
        rest(settings, "DELETE", f"/instances/{orthanc_id}")
    study(settings, 3, seed=2)  # a new log would have started at 1; this one says it all
    rest(settings, "DELETE", "/changes")  # the log cleared
    study(settings, 2, seed=3)
    result, _calls = backup(settings, chain)
    assert "none of the changes earlier snapshots saw" in result.work.orthanc_listing
    assert result.instances == 5
    backup(settings, tmp_path / "full")
    _same_content(manifest(settings, chain), manifest(settings, tmp_path / "full"))


def test_a_new_orthanc_database_gets_a_full_listing(home: Path, tmp_path: Path):
    """Orthanc started again on an empty database (as after a restore): its log restarts
    at 1, the snapshot after it lists everything and says why."""
    settings = load_settings(home, {"internal.orthanc_port": reserve_port()})
    chain = tmp_path / "chain"
    with orthanc_alone(settings):
        study(settings, 6, seed=1)
        backup(settings, chain)
    orthanc_dir = settings.layout.orthanc_dir
    for part in ("index", "storage"):
        shutil.rmtree(orthanc_dir / part)
    with orthanc_alone(settings):
        study(settings, 2, seed=2)
        result, _calls = backup(settings, chain)
        backup(settings, tmp_path / "full")
    assert result.work.orthanc_listing and result.work.orthanc_asked == result.instances == 2
    _same_content(manifest(settings, chain), manifest(settings, tmp_path / "full"))


def _same_content(chain: dict[str, Any], full: dict[str, Any]) -> None:
    assert chain["orthanc"] == full["orthanc"]
    assert chain["files"] == full["files"]
    assert chain["folders"].keys() == full["folders"].keys()


def test_only_the_series_the_journal_names_are_walked_and_a_weekly_walk_sees_the_rest(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    for n in range(20):
        write_atomic(_mkdirs(home / f"frames/1.{n}/1.{n}.1/1"), b"frame")
    _age(home, datetime.now(UTC) - timedelta(days=1))
    first = walk_home(home, {})
    assert first.full and len(first.examine) == 20
    assert first.frames_log is not None and first.frames_log["pending"] == []
    previous = {"files": {rel: {"size": 5} for rel, _ in first.examine}, "folders": first.folders,
                "walked": first.walked, "frames_log": first.frames_log}  # fmt: skip
    write_atomic(home / "frames/1.3/1.3.1/2", b"new")
    _journal(home, "1.3", "1.3.1", "2")  # stored as the pipeline does: journaled
    rewritten = home / "frames/1.4/1.4.1/1"  # rewritten in place, its folder's mtime kept
    folder_time = rewritten.parent.stat().st_mtime_ns
    rewritten.write_bytes(b"other")
    os.utime(rewritten.parent, ns=(folder_time, folder_time))
    write_atomic(home / "frames/1.5/1.5.1/2", b"unknown")  # written behind the journal's back
    then = walk_home(home, previous)
    assert not then.full
    assert sorted(rel for rel, _ in then.examine) == ["frames/1.3/1.3.1/1", "frames/1.3/1.3.1/2"]
    assert len(then.kept) == 19 and then.folders_checked == 2  # frames/ and that series'
    weekly = walk_home(home, previous, now=datetime.now(UTC) + timedelta(days=8))
    assert weekly.full and weekly.folders_checked == 1 + 2 * 20
    assert {"frames/1.4/1.4.1/1", "frames/1.5/1.5.1/2"} <= {rel for rel, _ in weekly.examine}


def _journal(home: Path, study: str, series: str, sop: str) -> None:
    """One instance stored now, in the home's journal."""
    db = open_database(home / "db" / "appliance.db")
    now = now_iso()
    db["instances"].insert({"sop_uid": sop, "study_uid": study, "series_uid": series,
                            "state": "stored", "received_at": now, "updated_at": now,
                            "frames": 1, "images_at": now})  # fmt: skip
    db.close()


def _mkdirs(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _age(root: Path, when: datetime) -> None:
    """Every folder below ``root`` changed long enough ago to be settled."""
    stamp = int(when.timestamp() * 1e9)
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, ns=(stamp, stamp))
