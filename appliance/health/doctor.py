"""``neuronova doctor``: the troubleshooting checklist as checks, each OK, WARN or FAIL
with the fix in one line. The CLI and the System page (``/api/admin/doctor``) run the
same :func:`run_doctor`.

Every check goes through the real path a user's request takes (nginx on loopback, the
app, Orthanc behind nginx's internal location) with a session of its own that lasts
:data:`PROBE_TTL` seconds and is revoked at the end; its token is never logged. The
checks live in ``path_checks`` (services and request paths) and ``upkeep_checks`` (queue,
disk, tokens, clock, certificate, backup); this module runs them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, replace
from typing import Any

import aiohttp
import sqlite_utils

from appliance.config import Settings
from appliance.health.checks import FAIL, OK, WARN, Check, CheckFn, Context
from appliance.health.path_checks import (
    check_dicom,
    check_exposure,
    check_internal_locations,
    check_orthanc_index,
    check_orthanc_via_nginx,
    check_services,
    check_token_frame,
)
from appliance.health.upkeep_checks import (
    check_backup,
    check_certificate,
    check_clock,
    check_disk,
    check_queue,
    check_token_failures,
    check_worker,
)
from appliance.jobs.queue import Queue
from appliance.security.sessions import SessionStore

EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}
PROBE_USER = "neuronova-doctor"
PROBE_ROLE = "radiologist"  # reads studies, nothing more
PROBE_TTL = 60


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
    """``fn``'s finding with the milliseconds it took (the checks run concurrently, so it
    includes the time the others kept the event loop), or a FAIL naming what broke."""
    started = time.perf_counter()
    check = await _finding(fn, ctx)
    return replace(check, took_ms=round((time.perf_counter() - started) * 1000))


async def _finding(fn: CheckFn, ctx: Context) -> Check:
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


CHECKS: tuple[CheckFn, ...] = (
    check_services,
    check_exposure,
    check_dicom,
    check_internal_locations,
    check_orthanc_via_nginx,
    check_orthanc_index,
    check_token_frame,
    check_queue,
    check_worker,
    check_disk,
    check_token_failures,
    check_clock,
    check_certificate,
    check_backup,
)
