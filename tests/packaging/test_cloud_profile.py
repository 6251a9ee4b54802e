"""The cloud profile for real: packaging/Dockerfile and compose.yaml on Debian's podman.

The base images are made locally (no registry: bench/cloud.py), the bundle is built from
this checkout and the appliance image from it; compose.yaml is brought up with
podman-compose on free 127.0.0.1 ports with two worker containers. Then, from outside:
a CT series pushed with dcmtk's storescu to the published DICOM port, login through nginx
over HTTPS, a QIDO query, one frame read pixel-identical, with Orthanc's index in the
profile's PostgreSQL; only nginx and the DICOM port published, Orthanc, the app, Redis
and PostgreSQL unreachable from another container network; no
object processed twice; ``down`` and ``up`` again keep the study and the users. Every
container, volume and network of the project is removed at the end.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import imagecodecs
import numpy as np
import pytest

from appliance.transcode.codestream import RPCL_SYNTAX
from bench.cloud import (
    Profile,
    build_image,
    check_engine,
    ensure_base_images,
    podman,
)
from bench.harness import ACCEPT, split_multipart
from bench.synthetic import Series, make_slices, write_series
from tests.support.clients import HttpsClient
from tests.support.tools import require_tool, storescu_command
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

SLICES = 12
HTJ2K = "1.2.840.10008.1.2.4.201"
INTERNAL = {"orthanc": 18042, "app": 18081, "redis": 6379, "postgres": 5432}


@pytest.fixture(scope="module")
def image(bundle, tmp_path_factory) -> Iterator[str]:
    """The appliance image, built from the run's bundle of this checkout."""
    for program, package in (("podman", "podman"), ("podman-compose", "podman-compose"),
                             ("debootstrap", "debootstrap")):  # fmt: skip
        require_tool(program, package)
    ensure_base_images()
    try:
        check_engine(tmp_path_factory.mktemp("engine"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    tag = f"localhost/neuronova-test/appliance:{os.getpid()}"
    build_image(bundle, tag)
    yield tag
    podman("rmi", "-f", tag, check=False)


@pytest.fixture(scope="module")
def profile(image, tmp_path_factory) -> Iterator[Profile]:
    """compose.yaml up and healthy, with two worker containers; removed entirely after."""
    env = {"WORKER_REPLICAS": "2"}
    up = Profile(f"nntest{os.getpid()}", tmp_path_factory.mktemp("compose"), image, env)
    try:
        up.up()
        yield up
    finally:
        up.down(volumes=True)


def client_of(profile: Profile) -> HttpsClient:
    """HTTPS through the published nginx port, trusting the profile's own certificate."""
    return HttpsClient(profile.ports["HTTPS_PORT"], profile.volume_path() / "tls" / "server.crt")


def admin_password(profile: Profile) -> str:
    """The first admin's password, left in the home volume at first start (mode 0600)."""
    path = profile.volume_path() / "secrets" / "first-admin-password"
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()


@pytest.fixture(scope="module")
def pushed(profile, tmp_path_factory):
    """A CT series sent with storescu to the published DICOM port, listed by QIDO."""
    slices = make_slices(SLICES)
    series = write_series(tmp_path_factory.mktemp("series"), slices)
    command = storescu_command(profile.ports["DICOM_PORT"], series.files, "CT_SCANNER")
    sent = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    client = client_of(profile)
    token = client.login("admin", admin_password(profile))
    uids = series.study_uid, series.series_uid
    wait_for(lambda: len(client.instances(token, *uids)) == SLICES, 120,
             f"{SLICES} instances listed by QIDO")  # fmt: skip
    return series, slices


def test_a_pushed_series_is_found_and_its_frames_read(profile, pushed):
    series, slices = pushed
    client = client_of(profile)
    token = client.login("admin", admin_password(profile))
    found = client.instances(token, series.study_uid, series.series_uid)
    assert {i["00080018"]["Value"][0] for i in found} == set(series.sop_uids)
    url = (f"{client.base}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances/{series.sop_uids[3]}/frames/1")  # fmt: skip
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    resp = client.session.get(url, timeout=10, headers=headers)
    assert resp.status_code == 200, resp.text
    part_type, codestream = split_multipart(resp.headers["Content-Type"], resp.content)
    assert f"transfer-syntax={RPCL_SYNTAX}" in part_type
    assert np.array_equal(imagecodecs.htj2k_decode(codestream).astype(np.int16), slices[3])


def test_orthanc_indexes_the_series_in_postgresql(profile, pushed):
    """The series' SOP Instance UIDs are rows of Orthanc's index in the postgres service
    (read as its superuser through the local socket), and Orthanc made no SQLite index."""
    series, _ = pushed
    query = "SELECT value FROM dicomidentifiers WHERE taggroup = 8 AND tagelement = 24"
    rows = podman("exec", "--user", "postgres", profile.containers("postgres")[0],
                  "psql", "-X", "-At", "-d", "orthanc", "-c", query).split()  # fmt: skip
    assert set(series.sop_uids) <= set(rows)
    index_dir = profile.volume_path() / "orthanc" / "index"
    assert not list(index_dir.glob("index*"))


def test_the_database_password_was_generated_for_orthanc_alone(profile):
    """Generated at postgres' first start, 0600 and owned by the appliance's user; only
    Orthanc's container mounts it (read-only), and no log holds it."""
    secret = profile.volume_path("dbsecret") / "password"
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.stat().st_uid == 10001
    password = secret.read_text().strip()
    assert len(password) >= 24
    fmt = "{{range .Mounts}}{{.Destination}} {{end}}"
    mounting = [c for c in profile.containers()
                if "/run/neuronova-db" in podman("inspect", "--format", fmt, c)]  # fmt: skip
    assert sorted(c.split("_")[-2] for c in mounting) == ["orthanc", "postgres"]
    assert not any(password in profile.logs(c, 5000) for c in profile.containers())


def test_only_nginx_and_the_dicom_port_are_published(profile):
    published = {}
    for container in profile.containers():
        lines = podman("port", container).split()
        published[container.split("_")[-2]] = sorted(line for line in lines if ":" in line)
    ports = profile.ports
    assert published == {
        "redis": [], "postgres": [], "orthanc": [], "app": [], "worker": [],
        "receiver": [f"127.0.0.1:{ports['DICOM_PORT']}"],
        "nginx": sorted([f"127.0.0.1:{ports['HTTP_PORT']}", f"127.0.0.1:{ports['HTTPS_PORT']}"]),
    }  # fmt: skip


def internal_address(profile: Profile, service: str) -> str:
    """A service container's address on the profile's internal network."""
    fmt = f'{{{{(index .NetworkSettings.Networks "{profile.name}_internal").IPAddress}}}}'
    return podman("inspect", "--format", fmt, profile.containers(service)[0]).strip()


def test_orthanc_the_app_and_redis_are_on_the_internal_network_only(profile):
    """Attached to the internal network alone (no route out, none in), and closed to a
    client on the profile's public network, where nginx answers (the control)."""
    for service in INTERNAL:
        fmt = "{{range $name, $n := .NetworkSettings.Networks}}{{$name}} {{end}}"
        networks = podman("inspect", "--format", fmt, profile.containers(service)[0]).split()
        assert networks == [f"{profile.name}_internal"], (service, networks)
    assert '"internal": true' in podman("network", "inspect", f"{profile.name}_internal")
    nginx_public = podman(
        "inspect", "--format",
        f'{{{{(index .NetworkSettings.Networks "{profile.name}_public").IPAddress}}}}',
        profile.containers("nginx")[0],
    ).strip()  # fmt: skip
    targets = [f"{internal_address(profile, s)}/{port}" for s, port in INTERNAL.items()]
    probe = " ".join(
        f'timeout 3 bash -c "</dev/tcp/{t}" 2>/dev/null && echo {t}=open || echo {t}=closed;'
        for t in [*targets, f"{nginx_public}/80"]
    )
    seen = podman("run", "--rm", "--network", f"{profile.name}_public", "--entrypoint",
                  "/bin/bash", profile.image, "-c", probe, timeout=60).split()  # fmt: skip
    assert seen == [f"{t}=closed" for t in targets] + [f"{nginx_public}/80=open"]


def claims(profile: Profile, series) -> list[tuple[str, int]]:
    """(state, times claimed by a worker) of each object of ``series``, from the journal."""
    return sorted((state, attempts) for state, attempts, _ in journal_rows(profile, series))


def journal_rows(profile: Profile, series) -> list[tuple[str, int, str]]:
    """(state, attempts, sop_uid) of each object of ``series``."""
    database = profile.volume_path() / "db" / "appliance.db"
    marks = ",".join("?" * len(series.sop_uids))
    query = f"SELECT state, attempts, sop_uid FROM instances WHERE sop_uid IN ({marks})"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute(query, series.sop_uids).fetchall()


def assert_each_claimed_once(profile: Profile, series, workers: list[str]) -> None:
    """Every object stored, claimed once plus once per retry its worker logged.

    A transient failure (Orthanc's name not resolving for a moment on a loaded machine)
    releases the object for a logged retry that claims it again; that is the design.
    A claim no logged retry explains is a second worker taking an object.
    """
    logs = {worker: profile.logs(worker, 5000) for worker in workers}
    retries = "\n".join(logs.values())
    expected = [("stored", 1 + _retries_of(retries, sop), sop) for sop in series.sop_uids]
    assert sorted(journal_rows(profile, series)) == sorted(expected), logs


def _retries_of(logs: str, sop_uid: str) -> int:
    """How many times the worker logs say ``sop_uid`` was released for a retry."""
    return sum(1 for line in logs.splitlines() if f"{sop_uid}: " in line and "retrying in" in line)


def test_two_workers_share_the_queue_and_process_each_object_once(profile, pushed):
    series, _ = pushed
    workers = profile.containers("worker")
    assert len(workers) == 2
    wait_for(lambda: all(profile.healthy(w) for w in workers), 60, "both workers healthy")
    assert_each_claimed_once(profile, series, workers)


def freeze_holding_a_claim(
    profile: Profile, worker: str, tmp_path, tries: int = 5
) -> tuple[Series, subprocess.Popen]:
    """Send series until ``worker`` is paused (``podman pause``) while it holds a claim of
    one: (that series, its storescu). An object takes the worker milliseconds, so a whole
    series may be stored before a claim is seen; then the next try sends a new one."""
    for attempt in range(tries):
        folder = tmp_path / f"try{attempt}"
        folder.mkdir()
        series = write_series(folder, make_slices(SLICES * 2))
        port = profile.ports["DICOM_PORT"]
        sending = subprocess.Popen(storescu_command(port, series.files, "CT_SCANNER"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = claims(profile, series)
            if ("processing", 1) in states:
                podman("pause", worker)
                if ("processing", 1) in claims(profile, series):
                    return series, sending
                podman("unpause", worker)
            elif [s for s, _ in states] == ["stored"] * len(series.files):
                break  # all stored before a claim was caught: try a new series
            time.sleep(0.02)
        assert sending.wait(timeout=120) == 0
    raise AssertionError(f"{worker} was never caught holding a claim in {tries} series")


def test_a_worker_starting_beside_a_busy_one_takes_none_of_its_objects(profile, tmp_path):
    """A worker (re)starting must not take back the claims of a worker still running:
    its start-up recovery used to reset every 'processing' object to 'received', so an
    object the busy worker held was processed a second time. The busy worker is frozen
    (``podman pause``) while it holds a claim, and the other one started beside it."""
    busy, starting = profile.containers("worker")
    podman("stop", "-t", "5", starting, timeout=60)
    series, sending = freeze_holding_a_claim(profile, busy, tmp_path)
    try:
        podman("start", starting, timeout=60)
        assert sending.wait(timeout=120) == 0
        wait_for(lambda: profile.healthy(starting), 60, "the second worker")

        def recovered_beside_the_busy_one() -> bool:  # it logs this after its recovery
            said = profile.logs(starting, lines=1000)
            return "other workers are running" in said and said.count("queue worker started") >= 2

        wait_for(recovered_beside_the_busy_one, 60, "the second worker's start-up recovery")
    finally:
        podman("unpause", busy, check=False)

    def all_stored() -> bool:
        return [state for state, _ in claims(profile, series)] == ["stored"] * len(series.files)

    wait_for(all_stored, 120, "the series stored")
    assert_each_claimed_once(profile, series, [busy, starting])


def test_nginx_follows_the_app_to_a_new_address(profile, pushed):
    """A restarted container may get another address (here: another container took the
    old one meanwhile); nginx resolved the app's name once, so it is told to reload."""
    series, _ = pushed
    app = profile.containers("app")[0]
    before = internal_address(profile, "app")
    podman("stop", "-t", "5", app, timeout=60)
    squatter = f"{profile.name}_squatter"
    podman("run", "-d", "--name", squatter, "--network", f"{profile.name}_internal",
           "--entrypoint", "/usr/bin/sleep", profile.image, "300")  # fmt: skip
    try:
        podman("start", app, timeout=60)
        assert internal_address(profile, "app") != before
        client = client_of(profile)
        wait_for(client.serving, 60, "the app answering through nginx again")
        token = client.login("admin", admin_password(profile))
        assert len(client.instances(token, series.study_uid, series.series_uid)) == SLICES
    finally:
        podman("rm", "-f", "-t", "0", squatter, check=False)


def test_down_and_up_keep_the_study_and_the_users(profile, pushed):
    series, _ = pushed
    app = profile.containers("app")[0]
    added = subprocess.run(
        ["podman", "exec", "-i", app, "neuronova", "user", "add", "reader",
         "--role", "radiologist", "--password-stdin"],
        input="reader-pass-1234\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    profile.down()
    assert profile.containers() == []
    profile.up()
    client = client_of(profile)
    token = client.login("reader", "reader-pass-1234")
    assert len(client.instances(token, series.study_uid, series.series_uid)) == SLICES
    client.login("admin", admin_password(profile))


def test_the_public_health_check_is_ok(profile):
    """/api/health (what a load balancer or Cloudflare polls) through nginx: the app
    leaves nginx and the receiver to their containers' checks."""
    client = client_of(profile)
    resp = client.session.get(f"{client.base}/api/health", timeout=10)
    assert (resp.status_code, resp.json()) == (200, {"status": "ok"})


def test_logs_go_to_the_engine(profile):
    logs = profile.compose("logs", "app")
    assert "web app listening on 0.0.0.0:" in logs
