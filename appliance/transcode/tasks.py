"""The Huey tasks of the ingest pipeline, registered on a Huey instance at run time."""

from __future__ import annotations

from huey import Huey

from appliance.config import Settings


def register_tasks(huey: Huey, settings: Settings) -> None:
    """Register the pipeline's tasks on ``huey`` (none yet: the ingest issue adds them)."""
