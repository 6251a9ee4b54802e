"""``neuronova doctor``: the troubleshooting checklist as checks, each OK, WARN or FAIL
with the fix in one line. The CLI and the System page (``/api/admin/doctor``) run the
same :func:`run_doctor`.

Every check goes through the real path a user's request takes (nginx on loopback, the
app, Orthanc behind nginx's internal location) with a session of its own that lasts
:data:`PROBE_TTL` seconds and is revoked at the end; its token is never logged.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import sqlite_utils

from appliance import internal_locations
from appliance.backup.status import read_status
from appliance.config import Settings, is_loopback_host
from appliance.health.probes import probe_receiver, probe_worker
from appliance.health.sockets import listeners, owned_inodes
from appliance.layout import HomeLayout
from appliance.security import audit
from appliance.security.sessions import SessionStore
from appliance.security.tls.describe import EXPIRY_WARNING_DAYS, certificate_info
from appliance.security.tls.files import TLSError
from appliance.transcode.monitor import QueueMonitor
from appliance.transcode.queue import Queue

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}
PROBE_USER = "neuronova-doctor"
PROBE_ROLE = "radiologist"  # reads studies, nothing more
PROBE_TTL = 60
# A CT series transcodes in seconds; an object waiting 10 min means the worker is behind,
# an hour that it is stuck.
QUEUE_WARN_AGE_S = 600
QUEUE_FAIL_AGE_S = 3600
TOKEN_FAILURE_WINDOW_S = 3600
TOKEN_FAILURES_WARN = 20  # a viewer left open on an expired session makes a few, not dozens
CLOCK_SKEW_MAX_S = 300
# A daily backup plus slack for a slow night; a week without one is a FAIL.
BACKUP_WARN_AGE_S = 26 * 3600
BACKUP_FAIL_AGE_S = 7 * 86400
INTERNAL_PATHS = (
    f"{internal_locations.ORTHANC}/system",
    f"{internal_locations.FRAMES}/x",
    f"{internal_locations.APP}/api/health",
)
QIDO_PATH = "/api/pacs/dicom-web/studies?limit=1"


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``status`` is OK, WARN or FAIL; ``fix`` says what to do."""

    name: str
    status: str
    message: str
    fix: str = ""


@dataclass
class Context:
    """What the checks share: settings, database, HTTP client, queue and probe token."""

    settings: Settings
    db: sqlite_utils.Database
    http: aiohttp.ClientSession
    queue: Queue
    token: str = ""

    @property
    def layout(self) -> HomeLayout:
        return HomeLayout(self.settings.home)

    @property
    def nginx_url(self) -> str:
        """nginx on loopback, as a browser on this machine reaches it."""
        s = self.settings
        if s.redirect_to_https:
            return f"https://{s.probe_host}:{s.https_port}"
        return f"http://{s.probe_host}:{s.http_port}"

    @property
    def app_url(self) -> str:
        return f"http://{self.settings.app_host}:{self.settings.app_port}"

    async def get(self, url: str, auth: bool = False) -> tuple[int, Any, bytes]:
        """GET ``url`` (our own self-signed certificate accepted): status, headers, body."""
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        tls: ssl.SSLContext | bool = not url.startswith("https:")
        async with self.http.get(url, headers=headers, ssl=tls, allow_redirects=False) as resp:
            return resp.status, resp.headers, await resp.read()


CheckFn = Callable[[Context], Awaitable[Check]]


def overall(checks: list[Check]) -> str:
    """The worst status among ``checks``."""
    return max((c.status for c in checks), key=EXIT_CODES.__getitem__, default=OK)


def report(checks: list[Check], took_s: float) -> dict[str, Any]:
    """The JSON form (CLI ``--json`` and the API)."""
    return {
        "status": overall(checks),
        "checks": [asdict(c) for c in checks],
        "took_ms": round(took_s * 1000),
    }


async def run_doctor(
    settings: Settings,
    db: sqlite_utils.Database,
    http: aiohttp.ClientSession,
    queue: Queue,
    sessions: SessionStore,
) -> list[Check]:
    """Run every check concurrently, with a probe session revoked at the end."""
    ctx = Context(settings, db, http, queue)
    session_id, ctx.token = sessions.start_probe(PROBE_USER, PROBE_ROLE, PROBE_TTL)
    try:
        return list(await asyncio.gather(*(_guarded(fn, ctx) for fn in CHECKS)))
    finally:
        sessions.revoke(session_id, "doctor finished")


async def _guarded(fn: CheckFn, ctx: Context) -> Check:
    name = fn.__name__.removeprefix("check_")
    try:
        return await fn(ctx)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return Check(
            name,
            FAIL,
            f"not reachable: {exc.__class__.__name__}: {exc}",
            f"check `neuronova status` and the logs in {ctx.layout.log_dir}",
        )
    except Exception as exc:  # one broken check must not hide the others' findings
        return Check(
            name,
            FAIL,
            f"the check could not run: {exc.__class__.__name__}: {exc}",
            "run `neuronova doctor` again; if it persists, report it with this line",
        )


# ------------------------------------------------------------------ services and network


def _expected_ports(s: Settings) -> dict[int, tuple[str, bool]]:
    """Port -> (service, may listen beyond loopback)."""
    internal_public = not is_loopback_host(s.internal_listen)
    ports = {
        s.http_port: ("nginx (HTTP)", True),
        s.https_port: ("nginx (HTTPS)", True),
        s.dicom_port: ("DICOM receiver", True),
        s.app_port: ("web app", internal_public),
        s.gate_port: ("frame gate", internal_public),
    }
    if not s.orthanc_remote:
        # Orthanc 1.10.1 cannot choose its address: it binds every interface and refuses
        # non-loopback clients (RemoteAccessAllowed false) and unauthenticated requests.
        ports[s.orthanc_port] = ("Orthanc", True)
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
            f"C-ECHO to {ctx.settings.ae_title}: {probe['error']}",
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


async def check_orthanc_via_nginx(ctx: Context) -> Check:
    """A QIDO through nginx: nginx reaches Orthanc with the credentials it holds."""
    fix = f"check Orthanc with `neuronova status` and {ctx.layout.log_dir}/orthanc.log"
    try:
        status, _, body = await ctx.get(ctx.nginx_url + QIDO_PATH, auth=True)
    except TimeoutError:
        return Check("orthanc_via_nginx", FAIL, "no answer to a study query through nginx", fix)
    if status == 200:
        return Check("orthanc_via_nginx", OK, "Orthanc answered a study query through nginx")
    if status in (401, 403) and b"token" not in body:
        return Check(
            "orthanc_via_nginx",
            FAIL,
            f"Orthanc refused nginx's credentials ({status})",
            "restart `neuronova run`: it writes nginx's and Orthanc's configuration "
            "from secrets/orthanc-password",
        )
    return Check(
        "orthanc_via_nginx",
        FAIL,
        f"study query through nginx answered HTTP {status}",
        fix,
    )


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
        path, what = QIDO_PATH, "a study query (no image stored yet)"
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


# ------------------------------------------------------------------------ queue and disk


async def check_queue(ctx: Context) -> Check:
    """The queue's backlog and its oldest waiting object (the queue monitor's figures)."""
    monitor = QueueMonitor(ctx.settings, ctx.queue)
    queued = await asyncio.to_thread(monitor.queued)
    if queued.error:  # the SQLite file or Redis did not answer
        backend = "[queue] redis_url" if ctx.settings.redis_url else str(ctx.layout.queue_file)
        return Check("queue", FAIL, queued.error, f"check {backend}")
    state = monitor.combine(ctx.db, queued, failed_limit=0)
    age = state.oldest_pending_age_s
    text = f"{state.pending} task(s) waiting"
    if age:
        text += f", oldest object waiting {age:.0f} s"
    if state.failed_total:
        text += f"; {state.failed_total} failed object(s) (`neuronova ingest status`)"
    fix = f"is the worker alive? see {ctx.layout.log_dir}/worker.log and `neuronova ingest status`"
    if age is not None and age > QUEUE_FAIL_AGE_S:
        return Check("queue", FAIL, text, fix)
    if age is not None and age > QUEUE_WARN_AGE_S:
        return Check("queue", WARN, text, fix)
    return Check("queue", OK, text)


async def check_worker(ctx: Context) -> Check:
    """The worker wrote its heartbeat recently."""
    probe = probe_worker(ctx.settings)
    if probe["status"] != "ok":
        return Check(
            "worker",
            FAIL,
            probe["error"],
            f"`neuronova run` restarts it; see {ctx.layout.log_dir}/worker.log",
        )
    return Check("worker", OK, f"heartbeat {probe['heartbeat_age_s']} s ago")


async def check_disk(ctx: Context) -> Check:
    """Free space where the image store lives."""
    store = ctx.layout.orthanc_dir
    free_mb = (await asyncio.to_thread(shutil.disk_usage, store)).free // 1024**2
    limit = ctx.settings.min_free_mb
    text = f"{free_mb} MiB free for {store}"
    fix = (
        "free space or move the home to a larger disk; the receiver refuses objects "
        f"below [dicom] min_free_mb = {limit}"
    )
    if free_mb < limit:
        return Check("disk", FAIL, text + " (new objects are refused)", fix)
    if free_mb * 1024**2 < ctx.settings.warn_free_bytes:  # the margin `status` warns at
        return Check("disk", WARN, text, fix)
    return Check("disk", OK, text)


# ------------------------------------------------------------- tokens, clock, TLS, backup


async def check_token_failures(ctx: Context) -> Check:
    """Rejected tokens in the last hour (the audit trail's per-minute rows), by reason."""
    rows = ctx.db.execute(
        "SELECT json_extract(detail, '$.reason'), sum(count) FROM audit WHERE event = ? "
        "AND coalesce(last_ts, ts) >= ? GROUP BY 1 ORDER BY 2 DESC",
        [audit.TOKEN_REJECTED, audit.iso_ago(TOKEN_FAILURE_WINDOW_S)],
    ).fetchall()
    total = sum(n for _, n in rows)
    text = f"{total} rejected token(s) in the last hour" + (
        ": " + ", ".join(f"{reason or 'unknown'} {n}" for reason, n in rows) if rows else ""
    )
    if total >= TOKEN_FAILURES_WARN:
        return Check(
            "token_failures",
            WARN,
            text,
            "see who and from where: `neuronova audit --since 1h --event token_rejected`",
        )
    return Check("token_failures", OK, text)


def _future_session_s(db: sqlite_utils.Database) -> float:
    newest = db.execute("SELECT max(created_at) FROM sessions").fetchone()[0]
    return datetime.fromisoformat(newest).timestamp() - time.time() if newest else 0.0


async def check_clock(ctx: Context) -> Check:
    """The clock is not behind the certificate's start nor behind tokens already issued."""
    fix = "set the clock (enable NTP: `timedatectl set-ntp true`)"
    try:
        info = await asyncio.to_thread(certificate_info, ctx.layout)
    except TLSError:
        info = None
    now = datetime.now(UTC)
    if info and (info.not_before - now).total_seconds() > CLOCK_SKEW_MAX_S:
        return Check(
            "clock",
            FAIL,
            f"the certificate starts {info.not_before:%Y-%m-%d %H:%M} "
            f"UTC, after this machine's time {now:%Y-%m-%d %H:%M}",
            fix,
        )
    ahead = _future_session_s(ctx.db)
    if ahead > CLOCK_SKEW_MAX_S:
        return Check(
            "clock",
            WARN,
            f"a session was issued {ahead:.0f} s in the future: the "
            "clock went back; tokens issued before look not yet valid",
            fix,
        )
    return Check(
        "clock", OK, f"{now:%Y-%m-%d %H:%M:%S} UTC, consistent with certificate and tokens"
    )


async def check_certificate(ctx: Context) -> Check:
    """The certificate nginx serves is valid for long enough."""
    renew = "install a renewed one: `neuronova tls install CERT KEY`"
    try:
        info = await asyncio.to_thread(certificate_info, ctx.layout)
    except TLSError as exc:
        return Check("certificate", FAIL, str(exc), "`neuronova run` generates one at start")
    until = f"{info.not_after:%Y-%m-%d}"
    if info.days_left < 0:
        return Check("certificate", FAIL, f"expired on {until}; browsers refuse it", renew)
    if info.days_left < EXPIRY_WARNING_DAYS:
        return Check("certificate", WARN, f"expires in {info.days_left} days ({until})", renew)
    return Check("certificate", OK, f"{info.kind}, valid until {until} ({info.days_left} days)")


async def check_backup(ctx: Context) -> Check:
    """The last backup's result and age (appliance.backup.status)."""
    status = read_status(ctx.layout)
    if status is None:
        return Check("backup", WARN, "no backup yet", "run `neuronova backup DEST`")
    age = time.time() - float(status.get("finished_unix", 0))
    hours = f"{age / 3600:.1f} h ago"
    if not status.get("ok"):
        return Check(
            "backup",
            FAIL,
            f"the last backup ({hours}) failed: {status.get('error')}",
            "fix the cause above and run `neuronova backup DEST`",
        )
    fix = "check the daily backup task, or run `neuronova backup DEST`"
    if age > BACKUP_FAIL_AGE_S:
        return Check("backup", FAIL, f"the last backup finished {hours}", fix)
    if age > BACKUP_WARN_AGE_S:
        return Check("backup", WARN, f"the last backup finished {hours}", fix)
    return Check("backup", OK, f"the last backup finished {hours} to {status.get('dest')}")


CHECKS: tuple[CheckFn, ...] = (
    check_services,
    check_exposure,
    check_dicom,
    check_internal_locations,
    check_orthanc_via_nginx,
    check_token_frame,
    check_queue,
    check_worker,
    check_disk,
    check_token_failures,
    check_clock,
    check_certificate,
    check_backup,
)
