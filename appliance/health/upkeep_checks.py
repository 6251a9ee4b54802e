"""``neuronova doctor``'s checks of what wears or drifts over time: the queue, the
worker, free disk, rejected tokens, the clock, the certificate and the backups."""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime

import sqlite_utils

from appliance.backup.status import read_status
from appliance.health.checks import FAIL, OK, WARN, Check, Context
from appliance.health.probes import probe_worker
from appliance.jobs.monitor import QueueMonitor
from appliance.security import audit
from appliance.security.tls.describe import EXPIRY_WARNING_DAYS, certificate_info
from appliance.security.tls.files import TLSError

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


async def check_queue(ctx: Context) -> Check:
    """The queue's backlog and its oldest waiting object (the queue monitor's figures)."""
    monitor = QueueMonitor(ctx.settings, ctx.queue)
    queued = await asyncio.to_thread(monitor.queued)
    if queued.error:  # the SQLite file or Redis did not answer
        backend = (
            "[queue] redis_url" if ctx.settings.queue.redis_url else str(ctx.layout.queue_file)
        )
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
    limit = ctx.settings.dicom.min_free_mb
    text = f"{free_mb} MiB free for {store}"
    fix = (
        "free space or move the home to a larger disk; the receiver refuses objects "
        f"below [dicom] min_free_mb = {limit}"
    )
    if free_mb < limit:
        return Check("disk", FAIL, text + " (new objects are refused)", fix)
    if free_mb * 1024**2 < ctx.settings.dicom.warn_free_bytes:  # the margin `status` warns at
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
