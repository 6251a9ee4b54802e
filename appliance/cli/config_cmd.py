"""``config show``."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.config import render_toml


@click.group()
def config() -> None:
    """Inspect the settings (HOME/neuronova.toml plus NEURONOVA_* overrides)."""


@config.command("show")
@home_option
def show(home: Path | None) -> None:
    """Print the effective settings as TOML (secrets are never shown)."""
    settings = settings_from(home)
    click.echo(f"# home: {settings.home}")
    click.echo(render_toml(settings), nl=False)
