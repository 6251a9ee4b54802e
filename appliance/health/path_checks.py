"""``neuronova doctor``'s checks of the services and of the paths a user's request takes:
listening sockets, exposure beyond loopback, DICOM, nginx's internal locations, Orthanc
behind nginx and its index, a token's frame."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import sqlite_utils

from appliance import internal_locations
from appliance.config import Settings, is_loopback_host
from appliance.errors import MissingBinaryError
from appliance.health.checks import FAIL, OK, Check, Context
from appliance.health.probes import probe_receiver
from appliance.health.sockets import listeners, owned_inodes
from appliance.store import orthanc_index

INTERNAL_PATHS = (
    f"{internal_locations.ORTHANC}/system",
    f"{internal_locations.FRAMES}/x",
    f"{internal_locations.APP}/api/health",
)
# A search the gateway hands to Orthanc (study searches the app answers from its own table).
QIDO_PATH = "/api/pacs/dicom-web/series?limit=1"
SERIES_PATH = "/api/pacs/dicom-web/series?SeriesInstanceUID={}"


def _expected_ports(s: Settings) -> dict[int, tuple[str, bool]]:
    """Port -> (service, may listen beyond loopback)."""
    internal_public = not is_loopback_host(s.internal.listen)
    ports = {
        s.web.http_port: ("nginx (HTTP)", True),
        s.web.https_port: ("nginx (HTTPS)", True),
        s.dicom.port: ("DICOM receiver", True),
        s.internal.app_port: ("web app", internal_public),
        s.internal.gate_port: ("frame gate", internal_public),
    }
    if not s.internal.orthanc_remote:
        # Orthanc 1.10.1 cannot choose its address: it binds every interface and refuses
        # non-loopback clients (RemoteAccessAllowed false) and unauthenticated requests.
        ports[s.internal.orthanc_port] = ("Orthanc", True)
    return ports


async def check_services(ctx: Context) -> Check:
    """Every service of this machine has a listening socket on its port."""
    listening = {x.port for x in await asyncio.to_thread(listeners)}
    missing = [
        f"{name} (:{port})"
        for port, (name, _) in _expected_ports(ctx.settings).items()
        if port not in listening
    ]
    if missing:
        return Check(
            "services",
            FAIL,
            f"not listening: {', '.join(missing)}",
            f"see {ctx.layout.log_dir}/ for why; `neuronova run` starts and restarts the services",
        )
    return Check("services", OK, "nginx, receiver, app, frame gate and Orthanc are listening")


def exposed(settings: Settings, state_file: Path) -> list[str]:
    """Sockets of ours that listen beyond loopback where they should not."""
    expected = _expected_ports(settings)
    ours = owned_inodes(state_file) or set()
    return sorted(
        f"{expected.get(x.port, ('another process of ours',))[0]} on {x}"
        for x in listeners()
        if not x.loopback
        and (x.inode in ours or x.port in expected)
        and not expected.get(x.port, ("", False))[1]
    )


async def check_exposure(ctx: Context) -> Check:
    """Only nginx's ports, the DICOM port (and Orthanc, see above) beyond loopback."""
    found = await asyncio.to_thread(exposed, ctx.settings, ctx.layout.state_file)
    if found:
        return Check(
            "exposure",
            FAIL,
            f"listening beyond loopback: {'; '.join(found)}",
            "set [internal] listen = 127.0.0.1 in neuronova.toml (or stop that "
            "process) and restart `neuronova run`",
        )
    beyond = "beyond loopback only nginx, DICOM and Orthanc (which refuses remote clients)"
    return Check("exposure", OK, beyond)


async def check_dicom(ctx: Context) -> Check:
    """The receiver answers a C-ECHO."""
    probe = await probe_receiver(ctx.settings)
    if probe["status"] != "ok":
        return Check(
            "dicom",
            FAIL,
            f"C-ECHO to {ctx.settings.dicom.ae_title}: {probe['error']}",
            f"see {ctx.layout.log_dir}/receiver.log",
        )
    return Check("dicom", OK, f"C-ECHO answered in {probe['latency_ms']} ms")


async def check_internal_locations(ctx: Context) -> Check:
    """nginx's ``/internal-*`` locations answer 404 when asked directly."""
    open_paths = []
    for path in INTERNAL_PATHS:
        status, _, _ = await ctx.get(ctx.nginx_url + path)
        if status != 404:
            open_paths.append(f"{path} -> {status}")
    if open_paths:
        return Check(
            "internal_locations",
            FAIL,
            f"reachable directly: {', '.join(open_paths)}",
            "restore the `internal;` lines: restart `neuronova run`, which rewrites "
            "nginx.conf from the bundled templates",
        )
    return Check("internal_locations", OK, "/internal-* locations answer 404 when asked directly")


def _series_search(db: sqlite_utils.Database) -> tuple[str, str]:
    """The series search the doctor sends Orthanc, and what it is.

    The newest stored series, by its UID, which Orthanc looks up in its index of
    identifiers. Without a constraint Orthanc 1.10.1 read every series of the archive,
    even for ``limit=1``: 16 ms at 10,262 instances, 110 ms at 50,052 (6.9x), the doctor's
    one check that grew with the archive; by UID 1.1-1.8x (6-12 ms to 10-13 ms, loaded
    machine). An empty archive has nothing to read.
    """
    instance = _latest_instance(db)
    if instance is None:
        return QIDO_PATH, "a series query (no image stored yet)"
    return SERIES_PATH.format(instance[1]), "a search for the newest stored series"


async def check_orthanc_via_nginx(ctx: Context) -> Check:
    """A QIDO through nginx: nginx reaches Orthanc with the credentials it holds."""
    fix = f"check Orthanc with `neuronova status` and {ctx.layout.log_dir}/orthanc.log"
    path, what = _series_search(ctx.db)
    try:
        status, _, body = await ctx.get(ctx.nginx_url + path, auth=True)
    except TimeoutError:
        return Check("orthanc_via_nginx", FAIL, f"no answer to {what} through nginx", fix)
    if status == 200:
        return Check("orthanc_via_nginx", OK, f"Orthanc answered {what} through nginx")
    if status in (401, 403) and b"token" not in body:
        return Check(
            "orthanc_via_nginx",
            FAIL,
            f"Orthanc refused nginx's credentials ({status})",
            "restart `neuronova run`: it writes nginx's and Orthanc's configuration "
            "from secrets/orthanc-password",
        )
    return Check("orthanc_via_nginx", FAIL, f"{what} through nginx answered HTTP {status}", fix)


async def check_orthanc_index(ctx: Context) -> Check:
    """Orthanc's index: its PostgreSQL plugin installed and server answering, if chosen."""
    s = ctx.settings
    if not orthanc_index.uses_postgresql(s):
        return Check("orthanc_index", OK, "Orthanc's index is SQLite, in the home")
    try:
        orthanc_index.index_plugins(s)
    except MissingBinaryError as exc:
        return Check("orthanc_index", FAIL, str(exc), "then restart `neuronova run`")
    answers = orthanc_index.server_answers
    if not await asyncio.to_thread(answers, s.orthanc.db_host, s.orthanc.db_port):
        return Check("orthanc_index", FAIL, orthanc_index.unreachable_message(s),
                     "then restart `neuronova run`")  # fmt: skip
    where = f"{s.orthanc.db_name} at {s.orthanc.db_host}:{s.orthanc.db_port}"
    return Check("orthanc_index", OK, f"Orthanc's index is PostgreSQL ({where}), answering")


def _latest_instance(db: sqlite_utils.Database) -> tuple[str, str, str] | None:
    """A recently stored instance: the last updated, which the (state, updated_at) index
    finds at once (ordering by stored_at read every stored instance of the archive)."""
    row = db.execute(
        "SELECT study_uid, series_uid, sop_uid FROM instances WHERE state = 'stored' "
        "ORDER BY updated_at DESC LIMIT 1"
    ).fetchone()
    return tuple(row) if row else None


async def check_token_frame(ctx: Context) -> Check:
    """A valid token gets an ``X-Accel-Redirect`` from the app, and nginx the frame behind it."""
    instance = _latest_instance(ctx.db)
    if instance is None:
        path, what = QIDO_PATH, "a series query (no image stored yet)"
    else:
        path = "/api/pacs/dicom-web/studies/{}/series/{}/instances/{}/frames/1".format(*instance)
        what = "frame 1 of the newest stored image"
    status, headers, _ = await ctx.get(ctx.app_url + path, auth=True)
    target = headers.get("X-Accel-Redirect", "")
    if status != 200 or not target.startswith(internal_locations.ALL):
        return Check(
            "token_frame",
            FAIL,
            f"the app answered HTTP {status} without X-Accel-Redirect for {what}",
            f"see {ctx.layout.log_dir}/ (the app's log) and `neuronova audit --since 10m`",
        )
    started = time.monotonic()
    status, _, body = await ctx.get(ctx.nginx_url + path, auth=True)
    if status != 200 or not body:
        return Check(
            "token_frame",
            FAIL,
            f"nginx answered HTTP {status} for {what} ({target})",
            "for a frame: `neuronova ingest retry` rebuilds missing frame files",
        )
    took = (time.monotonic() - started) * 1000
    return Check("token_frame", OK, f"{what}: {len(body)} bytes through nginx in {took:.0f} ms")
