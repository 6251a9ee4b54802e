"""The appliance's overall health: every component probed at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import sqlite_utils
from huey import Huey

from appliance.config import Settings, is_loopback_host
from appliance.health.probes import (
    Report,
    error,
    ok,
    probe_nginx,
    probe_orthanc,
    probe_receiver,
    probe_worker,
)
from appliance.security.keys import read_secret
from appliance.version import current as app_version

COMPONENTS = ("nginx", "app", "orthanc", "queue", "receiver")
PROBE_INTERVAL = 2.0
STATUS_KEY_HEADER = "X-NeuroNova-Status-Key"


def status_key(settings: Settings) -> str:
    """The home's status key: sent in :data:`STATUS_KEY_HEADER` from loopback, it shows
    the full report to whoever can read the home's secrets (``neuronova status``)."""
    return read_secret(settings.layout.status_key_file)


def queue_report(settings: Settings, huey: Huey) -> Report:
    """The worker's heartbeat plus the number of waiting tasks."""
    try:
        pending = huey.pending_count()
    except Exception as exc:  # the backend (SQLite file or Redis) is unreachable
        return error(f"queue storage unreachable: {exc.__class__.__name__}")
    report = probe_worker(settings)
    report.update(pending=pending, backend="redis" if settings.queue.redis_url else "sqlite")
    return report


async def _own_container() -> Report:
    return ok(checked="by its own container's health check")


async def check_health(
    settings: Settings,
    session: aiohttp.ClientSession,
    huey: Huey,
    db: sqlite_utils.Database,
    started_at: float,
) -> dict[str, Any]:
    """Probe every component concurrently; ``status`` is ``ok`` only if all of them are.

    In the cloud profile (the app listening beyond loopback, each service in its own
    container) nginx and the receiver take probes from loopback only: their containers'
    health checks probe them, and the report says so.
    """
    apart = not is_loopback_host(settings.internal.listen)
    nginx, orthanc, receiver, queue = await asyncio.gather(
        _own_container() if apart else probe_nginx(settings, session),
        probe_orthanc(settings, session),
        _own_container() if apart else probe_receiver(settings),
        asyncio.to_thread(queue_report, settings, huey),
    )
    components = {
        "nginx": nginx,
        "app": ok(version=app_version(), pid=os.getpid(), uptime_s=round(time.time() - started_at)),
        "orthanc": orthanc,
        "queue": queue,
        "receiver": receiver,
    }
    healthy = all(c["status"] == "ok" for c in components.values())
    report = {"status": "ok" if healthy else "error", "components": components}
    report["warnings"] = warnings(settings, db)
    return report


def warnings(settings: Settings, db: sqlite_utils.Database) -> list[str]:
    """Conditions that do not stop the appliance but need the administrator's attention."""
    found = []
    layout = settings.layout
    free = shutil.disk_usage(layout.spool_dir).free
    if free < settings.dicom.warn_free_bytes:
        found.append(
            f"disk nearly full: {free // 1024**2} MiB free in {layout.home} (warning below "
            f"[dicom] warn_free_mb = {settings.dicom.warn_free_bytes // 1024**2}); new DICOM "
            f"objects are refused below {settings.dicom.min_free_mb} MiB (status 0xA700)"
        )
    if not db["modalities"].count:
        found.append(
            "no modality is registered: the DICOM port accepts any caller "
            "(add one with `neuronova modality add AET`)"
        )
    failed = db["instances"].count_where("state = 'failed'")
    if failed:
        found.append(f"{failed} object(s) failed to ingest (see `neuronova ingest status`)")
    return found


class CachedHealth:
    """The health report, probed at most once per ``interval`` seconds.

    Every probe opens connections (a DICOM association to the receiver among them), so a
    caller polling ``/api/health`` in a loop must not multiply them: callers within
    ``interval`` of the last probe get its report, and concurrent callers share one probe.
    """

    def __init__(
        self, probe: Callable[[], Awaitable[dict[str, Any]]], interval: float = PROBE_INTERVAL
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._started = -interval
        self._task: asyncio.Future[dict[str, Any]] | None = None

    async def report(self) -> dict[str, Any]:
        """The latest report, probing again only when the last probe is old and finished."""
        now = time.monotonic()
        if self._task is None or (self._task.done() and now - self._started >= self._interval):
            self._started = now
            self._task = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._task)
