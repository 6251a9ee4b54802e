"""The daily backup (a Huey periodic task), its retention, and off-site copies with rclone.

The off-site remote is rclone's own SFTP server (``rclone serve sftp``) on loopback with
credentials made up here, never a mock: a backup goes there, comes back into a fresh
folder, verifies, and restores into a new home whose Orthanc files are byte-identical.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from appliance.backup import offsite
from appliance.backup.crypto import manifest_domain
from appliance.backup.daily import run_daily_backup
from appliance.backup.manifest import backup_key
from appliance.backup.prune import Keep, kept_snapshots, prune, referenced, stored_names
from appliance.backup.repository import SNAPSHOT_NAME, BackupError, Repository
from appliance.backup.status import next_backup, read_status
from appliance.cli import cli as neuronova_cli
from appliance.config import load_settings
from appliance.errors import ConfigError
from appliance.jobs.queue import create_queue
from appliance.jobs.work import worker_work
from appliance.layout import HomeLayout
from appliance.store.orthanc import OrthancStore
from bench.synthetic import Series, make_slices, write_series
from tests.support.backups import clear_texts, neuronova, shown_in_clear, unencrypted_copy
from tests.support.clients import api_token
from tests.support.ports import PortTaken, on_a_reserved_port
from tests.support.running import Appliance, make_appliance, run_cli, wait_stored
from tests.support.running import storescu as send
from tests.support.tools import DCMTK_STORESCU, require_tool
from tests.support.waiting import wait_for

SLICES = 5
REMOTE = "offsite:clinic/neuronova"


@dataclasses.dataclass(frozen=True)
class SftpRemote:
    """``rclone serve sftp`` on loopback and an rclone.conf (0600) naming it ``offsite``."""

    rclone: str
    config: Path
    password: str
    obscured: str


def write_rclone_conf(path: Path, port: int, obscured: str) -> Path:
    path.write_text(f"[offsite]\ntype = sftp\nhost = 127.0.0.1\nport = {port}\n"
                    f"user = backup\npass = {obscured}\n")  # fmt: skip
    path.chmod(0o600)
    return path


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def sftp(tmp_path_factory) -> Iterator[SftpRemote]:
    rclone = require_tool("rclone", "rclone")
    base = tmp_path_factory.mktemp("sftp")
    (base / "served").mkdir()
    (base / "no-keys").touch()  # password logins only
    password = secrets.token_urlsafe(18)

    def start(port: int) -> tuple[subprocess.Popen, int]:
        with open(base / "server.log", "wb") as log:
            server = subprocess.Popen(
                [rclone, "serve", "sftp", str(base / "served"), "--addr", f"127.0.0.1:{port}",
                 "--user", "backup", f"--pass={password}", "--config", str(base / "server.conf"),
                 "--cache-dir", str(base / "cache"), "--authorized-keys", str(base / "no-keys")],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        wait_for(lambda: server.poll() is not None or accepts(port), 30, "rclone serve sftp")
        if server.poll() is not None:
            said = (base / "server.log").read_text()
            if "address already in use" in said:
                raise PortTaken(port)
            raise AssertionError(f"rclone serve sftp exited: {said[-2000:]}")
        return server, port

    server, port = on_a_reserved_port(start)
    try:
        # On stdin: a password of token_urlsafe's alphabet may begin with '-' (a flag).
        obscured = subprocess.run([rclone, "obscure", "-"], input=password, capture_output=True,
                                  text=True, check=True).stdout.strip()  # fmt: skip
        config = write_rclone_conf(base / "rclone.conf", port, obscured)
        yield SftpRemote(rclone, config, password, obscured)
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[tuple[Appliance, Series]]:
    """An appliance holding one small study, its daily backup set 12 h from now."""
    require_tool(DCMTK_STORESCU, "dcmtk")
    base = tmp_path_factory.mktemp("daily")
    later = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")  # never fires here
    appliance = make_appliance(
        base, {"backup.destination": str(base / "backups"), "backup.time": later}
    ).start()
    try:
        series = write_series(base / "series", make_slices(SLICES))
        assert send(appliance, series.files).returncode == 0
        wait_stored(appliance, series.sop_uids)
        yield appliance, series
    finally:
        appliance.stop()


# ------------------------------------------------------------------- schedule and retention


def test_huey_fires_the_daily_backup_at_the_configured_time(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home", {"backup.time": "03:45"}, environ={})
    huey = create_queue(settings).huey

    def due(hour: int, minute: int) -> bool:
        tasks = huey.read_periodic(datetime(2026, 3, 1, hour, minute))  # the consumer's call
        return any(task.name == "daily_backup" for task in tasks)

    assert due(3, 45)
    assert not due(3, 46) and not due(15, 45) and not due(4, 45)
    assert next_backup(settings) is None  # no destination: off
    on = settings.with_values({"backup.destination": "/srv/backup"})
    at = datetime(2026, 3, 1, 3, 45, tzinfo=UTC)
    assert next_backup(on, at - timedelta(minutes=1)) == at
    assert next_backup(on, at) == at + timedelta(days=1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backup.time": "24:00"}, "[backup] time must be HH:MM in UTC"),
        ({"backup.keep_daily": 0}, "keep_daily must be at least 1"),
        ({"backup.destination": "backups"}, "destination must be an absolute path"),
        ({"backup.destination": "/b", "backup.remote": ":sftp,host=h,pass=p:x"}, "NAME:PATH"),
        ({"backup.remote": "gcs:bucket"}, "remote needs [backup] destination"),
    ],
)
def test_bad_backup_settings_are_refused(tmp_path: Path, values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, values, environ={})
    assert message in str(caught.value)


def _name(when: datetime) -> str:
    return when.strftime(SNAPSHOT_NAME)


def test_retention_keeps_the_newest_of_each_recent_day_and_week() -> None:
    start = datetime(2026, 1, 1, 2, 30, tzinfo=UTC)  # a Thursday; two snapshots a day
    names = [_name(start + timedelta(days=d, hours=h)) for d in range(40) for h in (0, 12)]
    kept = kept_snapshots(names, Keep(daily=3, weekly=3))
    newest_of_day = [_name(start + timedelta(days=d, hours=12)) for d in (39, 38, 37)]
    # Day 39 is Monday 9 February (ISO week 7), day 38 Sunday 8 February ends week 6, and
    # week 5 ended on Sunday 1 February (day 31).
    assert kept == {*newest_of_day, _name(start + timedelta(days=31, hours=12))}
    assert kept_snapshots(names, Keep(daily=1, weekly=0)) == {names[-1]}
    assert "not-ours" in kept_snapshots(["not-ours", *names], Keep(1, 0))


def _fake_repository(dest: Path, days: int, key: bytes = b"k" * 43) -> Repository:
    """A repository of ``days`` daily snapshots, each with one file of its own."""
    repo = Repository(dest, key)
    repo.create()
    start = datetime(2026, 1, 1, 2, 30, tzinfo=UTC)
    for day in range(days):
        source = dest.parent / f"file-{day}"
        source.write_text(f"content of day {day}")
        stored = repo.put(source)
        entry = {"sha256": stored.sha256, "size": stored.size, "mtime_ns": 0, "mode": 0o600}
        name = _name(start + timedelta(days=day))
        repo.save(name, {"format": 2, "name": name, "files": {"f": entry}, "databases": {},
                         "orthanc": {}})  # fmt: skip
    return repo


def test_prune_by_hand_dry_run_then_real(home: Path, tmp_path: Path, runner: CliRunner) -> None:
    repo = _fake_repository(tmp_path / "repo", 20, backup_key(HomeLayout(home), create=True))
    before = repo.snapshot_names()
    args = ["backup", "prune", str(repo.root), "--keep-daily", "3", "--keep-weekly", "3",
            "--home", str(home)]  # fmt: skip
    dry = runner.invoke(neuronova_cli, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    # each snapshot's objects: its file and the part of its manifest that names it
    assert "Would remove 16 snapshots and 32 objects" in dry.output
    assert f"remove snapshot {before[0]}" in dry.output
    assert repo.snapshot_names() == before and len(list(repo.stored_names())) == 40
    real = runner.invoke(neuronova_cli, args)
    assert real.exit_code == 0, real.output
    assert "Removed 16 snapshots and 32 objects" in real.output
    assert repo.snapshot_names() == [before[i] for i in (10, 17, 18, 19)]  # Sun 11 Jan too
    verified = runner.invoke(neuronova_cli, ["backup", "verify", str(repo.root),
                                             "--home", str(home)])  # fmt: skip
    assert verified.exit_code == 0, verified.output
    assert len(list(repo.stored_names())) == 8


def test_push_refuses_a_tampered_manifest_on_the_remote(sftp: SftpRemote, tmp_path: Path) -> None:
    repo = _fake_repository(tmp_path / "repo", days=2)
    remote = offsite.Remote("offsite:tampered", sftp.config)
    keep = Keep(daily=1, weekly=0)
    assert offsite.push(repo, remote, keep, lambda _line: None).removed == [
        repo.snapshot_names()[0]
    ]
    served = sftp.config.parent / "served" / "tampered"
    objects = {p.name for p in (served / "data").rglob("*") if p.is_file()}
    entry = repo.manifest(repo.snapshot_names()[-1])["files"]["f"]
    planted = {"format": 2, "name": "planted", "files": {"../escaped": entry},
               "databases": {}, "orthanc": {}}  # fmt: skip
    sealed = io.BytesIO()  # a manifest only the remote holds, made by someone with the key
    raw = json.dumps(planted).encode()
    repo.keys.encrypt(io.BytesIO(raw), sealed, manifest_domain("planted"))
    cases = [(sealed.getvalue(), ["snapshot planted refused", "files entry '../escaped'"]),
             (raw, ["snapshot planted: not an encrypted"])]  # fmt: skip
    for raw, expected in cases:
        _rcat(sftp, remote.child("manifests/planted"), raw)
        with pytest.raises(BackupError) as refused:
            offsite.push(repo, remote, keep, lambda _line: None)
        assert all(text in str(refused.value) for text in expected), refused.value
        assert "nothing was pruned there" in str(refused.value)
        assert objects <= {p.name for p in (served / "data").rglob("*") if p.is_file()}


def test_a_manifest_only_the_remote_holds_is_read_with_its_parts_from_there(
    sftp: SftpRemote, tmp_path: Path
) -> None:
    """The local repository lost a snapshot the remote keeps, and with it the parts of its
    manifest: the remote's prune reads them from the remote and keeps its objects."""
    repo = _fake_repository(tmp_path / "repo", days=2)
    remote = offsite.Remote("offsite:parts", sftp.config)
    keep = Keep(daily=2, weekly=0)
    assert offsite.push(repo, remote, keep, lambda _line: None).snapshots == 2
    lost = repo.snapshot_names()[0]
    parts = {ref["sha256"] for refs in repo.manifest(lost)["parts"].values() for ref in refs}
    repo.remove_snapshot(lost)
    prune(repo, keep)
    assert not any(repo.has(sha256) for sha256 in parts)  # only the remote holds them now
    pushed = offsite.push(repo, remote, keep, lambda _line: None)
    assert pushed.snapshots == 2 and pushed.removed == [] and pushed.objects_removed == 0


def test_push_refuses_a_remote_holding_another_repository(sftp: SftpRemote, tmp_path: Path) -> None:
    first = _fake_repository(tmp_path / "first", days=1)
    second = _fake_repository(tmp_path / "second", days=1)
    remote = offsite.Remote("offsite:shared", sftp.config)
    offsite.push(first, remote, Keep(1, 0), lambda _line: None)
    with pytest.raises(BackupError, match="holds another backup repository"):
        offsite.push(second, remote, Keep(1, 0), lambda _line: None)
    served = sftp.config.parent / "served" / "shared"
    assert (served / "repository.json").read_bytes() == first.key_record.read_bytes()


def _rcat(sftp: SftpRemote, path: str, data: bytes) -> None:
    subprocess.run([sftp.rclone, "--config", str(sftp.config), "rcat", path], input=data,
                   check=True, capture_output=True)  # fmt: skip


# ------------------------------------------------------------- the daily task, off-site


def _leaks(text: str, remote: SftpRemote) -> bool:
    return remote.password in text or remote.obscured in text


@pytest.mark.slow
def test_daily_backup_goes_off_site_and_restores_from_there(
    running, sftp: SftpRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    appliance, series = running
    layout = appliance.settings.layout
    dest = Path(appliance.settings.backup.destination)
    settings = appliance.settings.with_values(
        {"backup.remote": REMOTE, "backup.rclone_config": str(sftp.config)}
    )
    # The periodic task's own function, with the worker's work behind it (the consumer
    # calls this at [backup] time; test_huey_fires_... checks that it does).
    task = create_queue(settings, work=worker_work(settings)).backup
    assert task.call_local() is True
    record = read_status(layout)
    assert record["ok"] and record["remote"] == REMOTE and record["remote_snapshots"] == 1
    assert record["instances"] == SLICES and record["pruned"] == 0

    # By hand: a second snapshot, then a push with its progress line.
    env = {**appliance.env, "NEURONOVA_BACKUP_RCLONE_CONFIG": str(sftp.config)}
    assert neuronova("backup", str(dest), "--home", str(layout.home), env=env).returncode == 0
    pushed = neuronova("backup", "push", str(dest), "--remote", REMOTE,
                       "--home", str(layout.home), env=env)  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert "Pushing: " in pushed.stderr and "100%" in pushed.stderr
    # The day's first snapshot goes from the remote: only the newest of a day stays.
    assert f"Pushed {dest} to {REMOTE}: snapshots kept there 1, removed 1" in pushed.stdout

    # A restore from the remote: rclone copy back, verify, restore, same files.
    fresh = tmp_path / "from-remote"
    subprocess.run([sftp.rclone, "--config", str(sftp.config), "copy", REMOTE, str(fresh)],
                   check=True, capture_output=True)  # fmt: skip
    key = layout.backup_key_file.read_bytes().strip()
    copied = Repository(fresh, key)  # the remote was pruned too: one snapshot, its objects only
    assert len(copied.snapshot_names()) == 1
    assert set(copied.stored_names()) == stored_names(copied, referenced([copied.latest()]))
    assert shown_in_clear(sftp.config.parent / "served", clear_texts(layout.home)) == []
    verified = neuronova("backup", "verify", str(fresh), "--key-file", str(layout.backup_key_file))
    assert verified.returncode == 0, verified.stderr
    new_home = tmp_path / "restored"
    restored = neuronova("restore", str(fresh), "--home", str(new_home),
                         "--key-file", str(layout.backup_key_file))  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    _same_orthanc_files(appliance, series, new_home)
    assert not (new_home / "rclone").exists()  # the remote's credentials stay out

    texts = [layout.backup_status_file.read_text(), pushed.stdout, pushed.stderr, caplog.text]
    assert not any(_leaks(text, sftp) for text in texts)
    _shown_in_status_and_system_page(appliance, dest)


def _same_orthanc_files(appliance: Appliance, series: Series, new_home: Path) -> None:
    """Every instance of ``series`` is in the restored Orthanc storage, byte for byte."""
    storage = HomeLayout(new_home).orthanc_dir / "storage"
    restored = {hashlib.sha256(p.read_bytes()).hexdigest()
                for p in storage.rglob("*") if p.is_file()}  # fmt: skip
    original = OrthancStore(appliance.settings)
    for sop in series.sop_uids:
        assert hashlib.sha256(original.fetch(sop)).hexdigest() in restored, sop
    assert len(restored) == SLICES


def _shown_in_status_and_system_page(appliance: Appliance, dest: Path) -> None:
    shown = run_cli(appliance, "status")
    assert f"last backup: ok, 0.0 h ago, into {dest}" in shown.stdout, shown.stdout
    assert f"daily backup: {appliance.settings.backup.time} UTC into {dest}; next " in shown.stdout
    token = api_token(appliance, "admin", appliance.admin_password)
    headers = {"Authorization": f"Bearer {token}"}
    system = requests.get(f"{appliance.url}/api/admin/system", headers=headers, timeout=10)
    system = system.json()["backup"]
    assert system["last"]["ok"] is True and system["age_s"] < 600
    assert system["daily"]["destination"] == str(dest)
    assert system["daily"]["next"] == next_backup(appliance.settings).isoformat()


@pytest.mark.slow
def test_a_failing_daily_backup_is_recorded_and_never_raises(
    running, sftp: SftpRemote, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    appliance, _series = running
    layout = appliance.settings.layout
    wrong = subprocess.run([sftp.rclone, "obscure", "not-the-password"], capture_output=True,
                           text=True, check=True).stdout.strip()  # fmt: skip
    port = sftp.config.read_text().split("port = ")[1].split()[0]
    refused = write_rclone_conf(tmp_path / "wrong.conf", int(port), wrong)
    cases = [
        ({"backup.remote": REMOTE, "backup.rclone_config": str(refused)},
         "off-site copy: rclone lsf offsite:clinic/neuronova failed"),
        ({"backup.destination": str(layout.home / "backups")}, "is inside the home"),
    ]  # fmt: skip
    for values, reason in cases:
        settings = appliance.settings.with_values(values)
        assert run_daily_backup(settings) is False
        record = read_status(layout)
        assert record["ok"] is False and reason in record["error"], record
    open_conf = tmp_path / "open.conf"
    open_conf.write_text(sftp.config.read_text())
    os.chmod(open_conf, 0o644)
    settings = appliance.settings.with_values(
        {"backup.remote": REMOTE, "backup.rclone_config": str(open_conf)}
    )
    assert run_daily_backup(settings) is False
    assert f"run `chmod 600 {open_conf}`" in read_status(layout)["error"]
    assert not _leaks(layout.backup_status_file.read_text() + caplog.text, sftp)

    # A second run while one holds the repository (two workers queued it) stands aside.
    before = layout.backup_status_file.read_text()
    with Repository(Path(appliance.settings.backup.destination)).locked():
        assert run_daily_backup(appliance.settings) is None
    assert layout.backup_status_file.read_text() == before
    assert json.loads(run_cli(appliance, "status", "--json").stdout)["last_backup"]["ok"] is False


@pytest.mark.slow
def test_an_unencrypted_off_site_copy_is_replaced_after_the_migration(
    running, sftp: SftpRemote, tmp_path: Path
) -> None:
    appliance, _series = running
    layout = appliance.settings.layout
    key = layout.backup_key_file.read_bytes().strip()
    dest = tmp_path / "backup"
    home = ["--home", str(layout.home)]
    assert neuronova("backup", str(dest), *home).returncode == 0
    legacy = unencrypted_copy(Repository(dest, key), tmp_path / "old", key)
    remote = offsite.Remote("offsite:migrated", sftp.config)
    subprocess.run(
        [sftp.rclone, "--config", str(sftp.config), "copy", str(legacy.root), remote.path],
        check=True,
        capture_output=True,
    )  # as pushed before
    served = sftp.config.parent / "served" / "migrated"
    texts = clear_texts(layout.home)
    assert shown_in_clear(served, texts)
    migrated = neuronova("backup", "migrate", str(legacy.root), *home)
    assert migrated.returncode == 0, migrated.stderr
    offsite.push(Repository(legacy.root, key), remote, Keep(7, 4), lambda _line: None)
    assert sorted(os.listdir(served)) == ["data", "manifests", "repository.json"]
    assert shown_in_clear(served, texts) == []
