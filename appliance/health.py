"""The appliance's overall health: every component probed at once."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import Any

import aiohttp
import sqlite_utils
from huey import Huey

from appliance import __version__
from appliance.config import Settings
from appliance.layout import HomeLayout
from appliance.probes import (
    Report,
    error,
    ok,
    probe_nginx,
    probe_orthanc,
    probe_receiver,
    probe_worker,
)

COMPONENTS = ("nginx", "app", "orthanc", "queue", "receiver")


def queue_report(settings: Settings, huey: Huey) -> Report:
    """The worker's heartbeat plus the number of waiting tasks."""
    try:
        pending = huey.pending_count()
    except Exception as exc:  # the backend (SQLite file or Redis) is unreachable
        return error(f"queue storage unreachable: {exc.__class__.__name__}")
    report = probe_worker(settings)
    report.update(pending=pending, backend="redis" if settings.redis_url else "sqlite")
    return report


async def check_health(
    settings: Settings,
    session: aiohttp.ClientSession,
    huey: Huey,
    db: sqlite_utils.Database,
    started_at: float,
) -> dict[str, Any]:
    """Probe every component concurrently; ``status`` is ``ok`` only if all of them are."""
    nginx, orthanc, receiver, queue = await asyncio.gather(
        probe_nginx(settings, session),
        probe_orthanc(settings, session),
        probe_receiver(settings),
        asyncio.to_thread(queue_report, settings, huey),
    )
    components = {
        "nginx": nginx,
        "app": ok(version=__version__, pid=os.getpid(), uptime_s=round(time.time() - started_at)),
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
    layout = HomeLayout(settings.home)
    free = shutil.disk_usage(layout.spool_dir).free
    if free < 2 * settings.min_free_mb * 1024**2:
        found.append(
            f"disk nearly full: {free // 1024**2} MiB free in {layout.home}; new DICOM "
            f"objects are refused below {settings.min_free_mb} MiB (status 0xA700)"
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
