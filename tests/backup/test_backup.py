"""Backup and restore of a running appliance (``neuronova backup``, ``restore``).

A series is ingested, a second one is sent with dcmtk's storescu while the backup runs;
the backup verifies, reveals nothing without the key, a second backup copies only what is
new, and the restore into a new home starts, serves the same frames and holds the same
Orthanc files, users, shares, modalities, audit rows and settings.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
import requests

from appliance.backup.status import read_status
from appliance.config import load_settings
from appliance.db import open_database
from appliance.layout import HomeLayout
from appliance.store.frame_files import frame_relpath
from appliance.store.orthanc import OrthancStore
from appliance.supervise.nginx_user import let_workers_reach, worker_user
from appliance.supervise.ports import PORT_SETTINGS
from bench.synthetic import make_slices, write_series
from tests.support.backups import clear_texts, neuronova, shown_in_clear
from tests.support.clients import api_token
from tests.support.ports import reserve_port
from tests.support.running import Appliance, run_cli, wait_stored
from tests.support.running import storescu as send
from tests.support.tools import DCMTK_STORESCU, require_tool
from tests.support.waiting import wait_for

SLICES = 30
READER_PASSWORD = "reader-password-123"
AUDIT_SQL = "SELECT id, ts, event, username, detail FROM audit"


def wait_prepared(appliance: Appliance, sop_uids) -> None:
    """Until every one of ``sop_uids`` is stored with its JPEGs written (``images_at``)."""

    def prepared() -> bool:
        db = open_database(appliance.settings.layout.database_file)
        marks = ",".join("?" for _ in sop_uids)
        done = db.execute(f"SELECT count(*) FROM instances WHERE sop_uid IN ({marks}) AND "
                          "state = 'stored' AND images_at IS NOT NULL", list(sop_uids))  # fmt: skip
        count = done.fetchone()[0]
        db.close()
        return count == len(sop_uids)

    wait_for(prepared, 120, f"{len(sop_uids)} instances stored with their JPEGs")


def restored_appliance(home: Path, password: str) -> Appliance:
    """An appliance on the restored home, on free ports of its own."""
    overrides = {"network.bind": "127.0.0.1", "web.redirect_to_https": False}
    ports = {p: reserve_port() for p in PORT_SETTINGS}
    settings = load_settings(home, overrides | ports, environ={})
    let_workers_reach(worker_user(settings), Path(tempfile.gettempdir()), [home])
    return Appliance(settings, password, output=home.parent / "restored.out",
                     own_ports=PORT_SETTINGS)  # fmt: skip


def rows(home: Path, sql: str) -> list[tuple]:
    db = open_database(HomeLayout(home).database_file)
    try:
        return [tuple(row) for row in db.execute(sql).fetchall()]
    finally:
        db.close()


def tree_modes(root: Path) -> set[int]:
    """The permission bits of every file and folder below ``root``, itself included."""
    paths = [root, *root.rglob("*")]
    return {stat.S_IMODE(p.stat().st_mode) for p in paths}


def test_backup_refuses_a_stopped_home(home: Path, tmp_path: Path) -> None:
    result = neuronova("backup", str(tmp_path / "dest"), "--home", str(home))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("Error: cannot list Orthanc's instances")
    assert not (tmp_path / "dest").exists()
    assert "Start it with `neuronova run`" in result.stderr
    record = read_status(HomeLayout(home))
    assert record is not None and record["ok"] is False and record["error"]


def test_verify_refuses_a_folder_without_backup(tmp_path: Path) -> None:
    result = neuronova("backup", "verify", str(tmp_path))
    assert result.returncode == 1
    assert "holds no NeuroNova backup" in result.stderr


@pytest.mark.slow
def test_backup_while_sending_then_restore(appliance_factory, tmp_path: Path) -> None:
    require_tool(DCMTK_STORESCU, "dcmtk")
    original = appliance_factory().start()
    first = write_series(tmp_path / "first", make_slices(SLICES))
    second = write_series(tmp_path / "second", make_slices(SLICES, seed=11))
    third = write_series(tmp_path / "third", make_slices(10, seed=12))
    assert send(original, first.files).returncode == 0
    wait_stored(original, first.sop_uids)
    run_cli(original, "user", "add", "reader", "--role", "radiologist", "--password-stdin",
            stdin=READER_PASSWORD + "\n")  # fmt: skip
    assert run_cli(original, "modality", "add", "STORESCU", "--host", "127.0.0.1").returncode == 0
    token = api_token(original, "admin", original.admin_password)
    share = requests.post(f"{original.url}/api/shares", json={"study_uid": first.study_uid},
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)  # fmt: skip
    assert share.status_code in (200, 201), share.text
    dest = tmp_path / "backup"

    # The backup runs while the second series arrives.
    sending = subprocess.Popen(
        [DCMTK_STORESCU, "-aet", "STORESCU", "-aec", "NEURONOVA", "127.0.0.1",
         str(original.settings.dicom.port), *map(str, second.files)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    backed = run_cli(original, "backup", str(dest))
    assert sending.wait(timeout=300) == 0
    assert backed.returncode == 0, backed.stderr
    assert "Snapshot " in backed.stdout
    key_file = original.settings.layout.backup_key_file
    keyless = neuronova("backup", "verify", str(dest))  # no key: nothing can be read
    assert keyless.returncode == 1 and "Traceback" not in keyless.stderr
    assert f"{dest} is encrypted: give the backup key" in keyless.stderr
    verified = neuronova("backup", "verify", str(dest), "--key-file", str(key_file))
    assert verified.returncode == 0, verified.stderr
    assert tree_modes(dest) <= {0o700, 0o600}  # as sensitive as the home: never world-readable
    assert shown_in_clear(dest, clear_texts(original.settings.home)) == []
    first_copy = read_status(original.settings.layout)
    assert first_copy["ok"] and first_copy["bytes_copied"] > 0

    # Incremental: after 10 new instances, a backup copies about those only. Before them,
    # a catch-up backup takes what arrived during the first one (on a busy machine, most
    # of the second series and its JPEGs).
    wait_prepared(original, second.sop_uids)
    assert run_cli(original, "backup", str(dest)).returncode == 0
    assert send(original, third.files).returncode == 0
    wait_prepared(original, third.sop_uids)
    assert run_cli(original, "backup", str(dest)).returncode == 0
    again = read_status(original.settings.layout)
    assert again["instances"] == 2 * SLICES + 10
    assert 0 < again["bytes_copied"] < 2 * third.total_bytes + 1_000_000
    assert run_cli(original, "backup", str(dest)).returncode == 0
    idle = read_status(original.settings.layout)
    assert idle["bytes_copied"] < 1_000_000  # nothing new but the databases
    shown = run_cli(original, "status")
    assert f"last backup: ok, 0.0 h ago, into {dest}" in shown.stdout, shown.stdout
    reported = json.loads(run_cli(original, "status", "--json").stdout)["last_backup"]
    assert reported["ok"] is True and reported["snapshot"] == idle["snapshot"]

    # Restore refuses a home that is not empty, then restores into a new one.
    busy = neuronova("restore", str(dest), "--home", str(original.settings.home))
    assert busy.returncode == 1 and busy.stderr.splitlines()[-1].startswith("Error: ")
    assert "is not empty" in busy.stderr
    new_home = tmp_path / "restored" / "home"
    restored_run = neuronova("restore", str(dest), "--home", str(new_home),
                             "--key-file", str(key_file))  # fmt: skip
    assert restored_run.returncode == 0, restored_run.stderr
    assert "Warning" not in restored_run.stderr  # signed, and checked with its key
    assert HomeLayout(new_home).backup_key_file.read_bytes() == key_file.read_bytes()
    restored_audit = rows(new_home, AUDIT_SQL)  # before the restored appliance adds its own
    restored = restored_appliance(new_home, original.admin_password)
    try:
        restored.start()
        everything = [*first.sop_uids, *second.sop_uids, *third.sop_uids]
        _same_archive(original, restored, everything)
        _same_frame(restored, first, original)
        _same_records(original, restored, restored_audit)
    finally:
        restored.stop()

    # A damaged object is found by verify.
    victim = next(p for p in (dest / "data").rglob("*") if p.is_file())
    damage = bytearray(victim.read_bytes())
    damage[-1] ^= 0x01  # a flip: writing b"\0" over a last byte that was 0 changed nothing
    victim.write_bytes(bytes(damage))
    damaged = neuronova("backup", "verify", str(dest), "--key-file", str(key_file))
    assert damaged.returncode == 1
    assert f"{victim}: fails its authentication" in damaged.stderr


def _same_archive(original: Appliance, restored: Appliance, sop_uids: list[str]) -> None:
    before, after = OrthancStore(original.settings), OrthancStore(restored.settings)
    for sop in sop_uids:
        data = after.fetch(sop)
        assert data is not None and data == before.fetch(sop), sop


def _same_frame(restored: Appliance, series, original: Appliance) -> None:
    token = api_token(restored, "reader", READER_PASSWORD)  # a radiologist reads images
    rel = frame_relpath(series.study_uid, series.series_uid, series.sop_uids[0], 1)
    url = (f"{restored.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances/{series.sop_uids[0]}/frames/1")  # fmt: skip
    resp = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200
    assert resp.content == (original.settings.layout.frames_dir / rel).read_bytes()


def _same_records(original: Appliance, restored: Appliance, restored_audit: list) -> None:
    old, new = original.settings.home, restored.settings.home
    for sql in ("SELECT username, role, password_hash FROM users ORDER BY username",
                "SELECT ae_title, host FROM modalities ORDER BY ae_title",
                "SELECT id, study_uid, created_by FROM shares ORDER BY id"):  # fmt: skip
        assert rows(new, sql) and set(rows(new, sql)) <= set(rows(old, sql)), sql
    assert {"reader"} <= {r[0] for r in rows(new, "SELECT username FROM users")}
    assert set(restored_audit) <= set(rows(old, AUDIT_SQL))
    assert {"share_created", "admin_change", "login_ok"} <= {row[2] for row in restored_audit}
    assert (new / "neuronova.toml").read_text() == (old / "neuronova.toml").read_text()
    for secret in ("jwt-signing.key", "orthanc-password", "backup-key"):
        path = HomeLayout(new).secrets_dir / secret
        assert path.read_bytes() == (HomeLayout(old).secrets_dir / secret).read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads((new / "run" / "supervisor.json").read_text())
    assert os.listdir(HomeLayout(new).frames_dir)
