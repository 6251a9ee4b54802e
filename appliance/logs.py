"""Logging set-up: readable one-line records, to stderr and optionally to a file."""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(
    level: int = logging.INFO, log_file: Path | None = None, dicom_level: int = logging.CRITICAL
) -> None:
    """Send the appliance's log records to stderr (and ``log_file``).

    ``dicom_level`` is pynetdicom's level: its messages matter in the receiver; elsewhere
    pynetdicom only runs health probes, whose failures the probes report themselves.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level, format=FORMAT, datefmt="%Y-%m-%d %H:%M:%S", handlers=handlers, force=True
    )
    for noisy in ("aiohttp.access", "huey"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    logging.getLogger("pynetdicom").setLevel(max(level, dicom_level))
