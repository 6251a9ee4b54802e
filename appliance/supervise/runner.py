"""``neuronova run``: prepare the configuration, then start and supervise every service."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import aiohttp

from appliance.config import Settings, settings_environment
from appliance.health.probes import (
    probe_http,
    probe_nginx,
    probe_orthanc,
    probe_receiver,
    worker_running,
)
from appliance.home import require_initialized
from appliance.programs import find_program
from appliance.store.orthanc_index import wait_for_server
from appliance.supervise.binaries import NGINX
from appliance.supervise.leftovers import reap_leftovers
from appliance.supervise.lock import HomeLock
from appliance.supervise.logs import MIB
from appliance.supervise.nginx import nginx_command, render_nginx_conf
from appliance.supervise.orthanc import orthanc_command, orthanc_environment, prepare_orthanc
from appliance.supervise.ports import settle_ports
from appliance.supervise.supervisor import ChildSpec, LogLimits, Supervisor

# The receiver finishes its open associations for up to ingest.receiver.DRAIN_TIMEOUT
# (15 s) after SIGTERM; it gets that and a margin before it is killed.
RECEIVER_STOP_TIMEOUT = 17.0
log = logging.getLogger("neuronova.supervisor")


def self_command() -> list[str]:
    """How to start this program again: the bundle's executable, or ``python -m appliance``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "appliance"]


def log_limits(settings: Settings) -> LogLimits:
    """The ``[logs]`` settings: rotate at ``max_mb`` MiB, keep ``keep`` old files."""
    return LogLimits(max_bytes=settings.logs.max_mb * MIB, keep=settings.logs.keep)


def build_specs(settings: Settings, session: aiohttp.ClientSession) -> list[ChildSpec]:
    """The children in start order: storage first, the public entry points last."""
    logs = settings.layout.log_dir
    env = settings_environment(settings)
    service = [*self_command(), "service"]

    async def orthanc_ready() -> bool:
        return (await probe_orthanc(settings, session))["status"] == "ok"

    async def worker_ready() -> bool:
        return worker_running(settings)

    async def app_ready() -> bool:
        url = f"http://127.0.0.1:{settings.internal.app_port}/api/health/live"
        return (await probe_http(session, url))["status"] == "ok"

    async def receiver_ready() -> bool:
        return (await probe_receiver(settings))["status"] == "ok"

    async def nginx_ready() -> bool:
        return (await probe_nginx(settings, session))["status"] == "ok"

    apps = [
        ChildSpec(name, [*service, "app"], logs / f"{name}.log", app_ready, env=env)
        for name in ["app", *(f"app{n}" for n in range(2, settings.internal.app_processes + 1))]
    ]
    return [
        ChildSpec(
            "orthanc",
            orthanc_command(settings),
            logs / "orthanc.log",
            orthanc_ready,
            env=orthanc_environment(),
        ),
        ChildSpec("worker", [*service, "worker"], logs / "worker.log", worker_ready, env=env),
        *apps,
        ChildSpec(
            "receiver",
            [*service, "receiver"],
            logs / "receiver.log",
            receiver_ready,
            env=env,
            stop_timeout=RECEIVER_STOP_TIMEOUT,
        ),
        ChildSpec(
            "nginx",
            nginx_command(find_program(NGINX), settings),
            logs / "nginx.log",
            nginx_ready,
            stop_signal=signal.SIGQUIT,
            own_logs=(logs / "nginx-access.log", logs / "nginx-error.log"),
            reopen_signal=signal.SIGUSR1,
        ),
    ]


async def _supervise(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        supervisor = Supervisor(
            build_specs(settings, session),
            settings.layout.state_file,
            limits=log_limits(settings),
        )
        await supervisor.run_until(stop)


def run_appliance(settings: Settings) -> None:
    """Run the appliance in the foreground until SIGTERM or SIGINT.

    Raises :class:`~appliance.errors.ApplianceError` subclasses for problems a user can
    fix (home not initialized, already running, a port taken, a program missing).
    """
    layout = require_initialized(settings)
    with HomeLock(layout.lock_file):
        reap_leftovers(layout.state_file)
        settings = settle_ports(settings)
        find_program(NGINX)
        prepare_orthanc(settings)
        wait_for_server(settings)
        render_nginx_conf(settings)
        log.info(
            "starting NeuroNova: web http://%s:%d/, DICOM %s port %d, home %s",
            settings.network.probe_host,
            settings.web.http_port,
            settings.dicom.ae_title,
            settings.dicom.port,
            settings.home,
        )
        asyncio.run(_supervise(settings))
