"""``neuronova doctor``: the troubleshooting checklist (appliance.health.doctor)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import click

from appliance.cli.options import home_option, settings_from
from appliance.db import open_database
from appliance.health.doctor import EXIT_CODES, FAIL, OK, Check, overall, report, run_doctor
from appliance.home import require_initialized
from appliance.jobs.queue import create_queue
from appliance.security.keys import read_secret
from appliance.security.sessions import SessionStore
from appliance.security.tokens import TokenService

COLOURS = {OK: "green", FAIL: "red"}
HTTP_TIMEOUT = 5.0


async def _run(home: Path | None) -> list[Check]:
    settings = settings_from(home)
    layout = require_initialized(settings)
    db = open_database(layout.database_file)
    sessions = SessionStore(db, TokenService(read_secret(layout.jwt_key_file)))
    try:
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            return await run_doctor(settings, db, http, create_queue(settings), sessions)
    finally:
        db.close()


@click.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(home: Path | None, as_json: bool) -> None:
    """Check the running appliance against the troubleshooting list.

    Services listening (and nothing of ours beyond loopback but nginx and DICOM), the
    internal locations closed, Orthanc behind nginx, a token's X-Accel-Redirect and the
    frame behind it, queue, worker, disk, token failures, clock, certificate and the
    last backup. Each check is OK, WARN or FAIL with the fix in one line.

    \b
    Exit status: 0 all OK, 1 at least one WARN, 2 at least one FAIL.
    """
    started = time.monotonic()
    checks = asyncio.run(_run(home))
    if as_json:
        click.echo(json.dumps(report(checks, time.monotonic() - started), indent=2))
    else:
        for check in checks:
            mark = click.style(f"{check.status:<4}", fg=COLOURS.get(check.status, "yellow"))
            click.echo(f"{mark} {check.name:<18} {check.message}")
            if check.fix:
                click.echo(f"     {'':<18} fix: {check.fix}")
    sys.exit(EXIT_CODES[overall(checks)])
