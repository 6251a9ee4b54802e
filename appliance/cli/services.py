"""``service app|worker|receiver``: one service in the foreground (what `run` supervises,
and what each container runs in the cloud profile)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.config import Settings
from appliance.home import require_initialized
from appliance.supervise.logs import configure_logging


@click.group()
def service() -> None:
    """Run one service alone (`neuronova run` starts all of them for you)."""


def _settings(home: Path | None, dicom_level: int = logging.CRITICAL) -> Settings:
    configure_logging(dicom_level=dicom_level)
    settings = settings_from(home)
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
    from appliance.transcode.worker import serve

    serve(_settings(home))


@service.command("receiver")
@home_option
def receiver(home: Path | None) -> None:
    """The DICOM receiver (C-ECHO, C-STORE) on the DICOM port."""
    from appliance.ingest.receiver import serve

    serve(_settings(home, dicom_level=logging.WARNING))
