"""Health probes of each component, shared by the supervisor's readiness checks and
``/api/health``. Each returns a component report: ``{"status": "ok" | "error", ...}``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from appliance.config import Settings
from appliance.ingest.requestor import HEALTH_AE_TITLE
from appliance.store.orthanc import orthanc_auth_header, orthanc_url

WORKER_HEARTBEAT_MAX_AGE = 15.0
Report = dict[str, Any]


def ok(**detail: Any) -> Report:
    """A healthy component report."""
    return {"status": "ok", **detail}


def error(message: str, **detail: Any) -> Report:
    """A failing component report with a readable reason."""
    return {"status": "error", "error": message, **detail}


async def probe_http(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str] | None = None,
    expect_body: bytes | None = None,
) -> Report:
    """GET ``url``; ok when it answers 200 (with ``expect_body``, if given)."""
    started = time.monotonic()
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as resp:
            body = await resp.read()
            if resp.status != 200:
                return error(f"answered HTTP {resp.status}")
            if expect_body is not None and body.strip() != expect_body:
                return error("another program answers on this port")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return error(f"not reachable: {exc.__class__.__name__}")
    return ok(latency_ms=round((time.monotonic() - started) * 1000, 1))


async def probe_nginx(settings: Settings, session: aiohttp.ClientSession) -> Report:
    """Our nginx (not another program on its port) answers its loopback health location."""
    try:
        instance = settings.layout.nginx_instance_file.read_bytes().strip()
    except FileNotFoundError:
        return error("nginx has not been configured yet")
    url = f"http://{settings.network.probe_host}:{settings.web.http_port}/nginx-health"
    return await probe_http(session, url, expect_body=instance)


async def probe_orthanc(settings: Settings, session: aiohttp.ClientSession) -> Report:
    """Orthanc answers ``/system`` with the appliance's credentials."""
    url = f"{orthanc_url(settings)}/system"
    headers = {"Authorization": orthanc_auth_header(settings)}
    try:
        async with session.get(url, headers=headers) as resp:
            if resp.status != 200:
                return error(f"answered HTTP {resp.status}")
            system = await resp.json()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        return error(f"not reachable: {exc.__class__.__name__}")
    return ok(version=system.get("Version"), database=system.get("DatabaseVersion"))


def echo(host: str, port: int, called_ae: str, timeout: float = 3.0) -> Report:
    """Send a C-ECHO (DICOM verification, PS3.4 Annex A) and report the outcome."""
    ae = AE(ae_title=HEALTH_AE_TITLE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    started = time.monotonic()
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return error("association refused or no answer")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or status.Status != 0x0000:
        return error("C-ECHO failed")
    return ok(latency_ms=round((time.monotonic() - started) * 1000, 1))


async def probe_receiver(settings: Settings) -> Report:
    """The DICOM receiver answers a C-ECHO on its port."""
    report = await asyncio.to_thread(
        echo, settings.network.probe_host, settings.dicom.port, settings.dicom.ae_title
    )
    report.update(ae_title=settings.dicom.ae_title, port=settings.dicom.port)
    return report


def probe_worker(settings: Settings) -> Report:
    """The queue's consumer has written its heartbeat recently."""
    heartbeat = settings.layout.worker_heartbeat_file
    try:
        age = time.time() - heartbeat.stat().st_mtime
    except FileNotFoundError:
        return error("the worker has not started")
    if age > WORKER_HEARTBEAT_MAX_AGE:
        return error(f"no worker heartbeat for {age:.0f} s")
    return ok(heartbeat_age_s=round(age, 1))


def worker_running(settings: Settings) -> bool:
    """Whether a queue worker is consuming this home's queue now (its heartbeat is fresh)."""
    return probe_worker(settings)["status"] == "ok"
