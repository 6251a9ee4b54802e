"""``service app|worker|receiver|orthanc|nginx``: one service in the foreground (what
`run` supervises, and what each container runs in the cloud profile, compose.yaml), and
``service check NAME``, a container's health check."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import click

from appliance.cli.options import home_option, settings_from
from appliance.config import Settings
from appliance.health.probes import (
    Report,
    probe_http,
    probe_nginx,
    probe_orthanc,
    probe_receiver,
    probe_worker,
)
from appliance.home import init_home, require_initialized
from appliance.programs import find_program
from appliance.security.keys import write_private_file
from appliance.store.orthanc_index import wait_for_server
from appliance.supervise.binaries import NGINX
from appliance.supervise.logs import configure_logging
from appliance.supervise.nginx import nginx_command, render_nginx_conf
from appliance.supervise.orthanc import orthanc_command, orthanc_environment, prepare_orthanc

log = logging.getLogger("neuronova.service")
SERVICES = ("app", "worker", "receiver", "orthanc", "nginx")


@click.group()
@click.option(
    "--init",
    "init_first",
    is_flag=True,
    help="Set up the home first if it is new (containers that share one home volume).",
)
@click.pass_context
def service(ctx: click.Context, init_first: bool) -> None:
    """Run one service alone (`neuronova run` starts all of them for you)."""
    ctx.meta["neuronova.service.init"] = init_first


def first_admin_password_file(settings: Settings) -> Path:
    """Where ``service --init`` leaves the first admin's password (mode 0600)."""
    return settings.layout.secrets_dir / "first-admin-password"


def prepare_home(settings: Settings) -> None:
    """``init`` the home once, whichever container comes first (init_home's lock);
    the first admin's password goes to :func:`first_admin_password_file`, never a log, and
    the log names the backup key's file, never the key."""
    result = init_home(settings)
    if result.admin_password is not None:
        path = first_admin_password_file(settings)
        write_private_file(path, result.admin_password.encode() + b"\n")
        log.info("created the home; the first admin password (user admin) is in %s", path)
    if result.backup_key is not None:
        key_file = settings.layout.backup_key_file
        log.info("the backup key is in %s: keep a copy away from this machine, restore needs "
                 "it (`neuronova backup key`)", key_file)  # fmt: skip


def _settings(home: Path | None, dicom_level: int = logging.CRITICAL) -> Settings:
    """The settings of a service, after sending its log to stdout as JSON lines (the
    supervisor keeps them in ``HOME/logs/NAME.log``; a container engine collects them)."""
    component = click.get_current_context().info_name or "service"
    configure_logging(dicom_level=dicom_level, component=component, stream=sys.stdout)
    settings = settings_from(home)
    if click.get_current_context().meta.get("neuronova.service.init"):
        prepare_home(settings)
    require_initialized(settings)
    return settings


@service.command("app")
@home_option
def app(home: Path | None) -> None:
    """The web application on 127.0.0.1 (behind nginx)."""
    from appliance.web.app import serve

    serve(_settings(home))


@service.command("worker")
@home_option
def worker(home: Path | None) -> None:
    """The task-queue consumer (HTJ2K transcoding)."""
    from appliance.jobs.worker import serve

    serve(_settings(home))


@service.command("receiver")
@home_option
def receiver(home: Path | None) -> None:
    """The DICOM receiver (C-ECHO, C-STORE) on the DICOM port."""
    from appliance.ingest.receiver import serve
    from appliance.jobs.queue import create_queue

    settings = _settings(home, dicom_level=logging.WARNING)
    serve(settings, create_queue(settings))


@service.command("orthanc")
@home_option
def orthanc(home: Path | None) -> None:
    """Orthanc with its generated configuration (replaces this process)."""
    settings = _settings(home)
    wait_for_server(settings)  # compose's depends_on does not wait for health everywhere
    prepare_orthanc(settings)
    command = orthanc_command(settings)
    sys.stdout.flush()
    os.execve(command[0], command, {**os.environ, **orthanc_environment()})


@service.command("nginx")
@home_option
def nginx(home: Path | None) -> None:
    """nginx with its generated configuration, logging to stdout.

    nginx resolves the app's and Orthanc's host names only when it reads its
    configuration; a container that restarts may come back at another address. So nginx
    runs as a child, told to reload (SIGHUP) whenever those names resolve differently.
    """
    settings = _settings(home)
    render_nginx_conf(settings, stdout_logs=True)
    command = nginx_command(find_program(NGINX), settings, stdout_logs=True)
    sys.exit(run_following(command, [settings.internal.app_host, settings.internal.orthanc_host]))


def resolve(hosts: list[str]) -> list[list[str]]:
    """The addresses each host name resolves to now (empty when it does not)."""
    found = []
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
        except OSError:
            infos = []
        found.append(sorted({info[4][0] for info in infos}))
    return found


def run_following(command: list[str], hosts: list[str], every: float = 2.0) -> int:
    """Run nginx until it exits, reloading it when ``hosts`` resolve to new addresses;
    SIGTERM and SIGINT stop it gracefully (SIGQUIT). Returns its exit status."""
    child = subprocess.Popen(command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: child.send_signal(signal.SIGQUIT))
    known = resolve(hosts)
    while True:
        try:
            return child.wait(timeout=every)
        except subprocess.TimeoutExpired:
            now = resolve(hosts)
            if now != known and all(now):
                log.info("%s now at %s: reloading nginx", ", ".join(hosts), now)
                child.send_signal(signal.SIGHUP)
                known = now


async def probe_service(name: str, settings: Settings) -> Report:
    """The health probe of one service, as ``neuronova run`` uses it for readiness."""
    if name == "worker":
        return probe_worker(settings)
    if name == "receiver":
        return await probe_receiver(settings)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        if name == "orthanc":
            return await probe_orthanc(settings, session)
        if name == "nginx":
            return await probe_nginx(settings, session)
        return await probe_http(
            session, f"http://127.0.0.1:{settings.internal.app_port}/api/health/live"
        )


@service.command("check")
@click.argument("name", type=click.Choice(SERVICES))
@home_option
def check(name: str, home: Path | None) -> None:
    """Probe one service (a container's health check); exit 1 when it is not healthy."""
    settings = settings_from(home)
    report = asyncio.run(probe_service(name, settings))
    click.echo(json.dumps({name: report}))
    if report["status"] != "ok":
        sys.exit(1)
