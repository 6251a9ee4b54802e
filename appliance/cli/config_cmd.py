"""``config show``, ``config client-secret``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.config import render_toml
from appliance.home import require_initialized
from appliance.security.keys import write_private_file


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


@config.command("client-secret")
@click.argument("kind", type=click.Choice(["oidc", "smart"]))
@click.option("--remove", is_flag=True, help="Delete it: the appliance is a public client.")
@home_option
def client_secret(kind: str, remove: bool, home: Path | None) -> None:
    """Store the client secret for single sign-on (oidc) or the EHR (smart), read from
    stdin, in HOME/secrets (mode 0600). The web app reads it at its next start."""
    path = require_initialized(settings_from(home)).client_secret_file(kind)
    if remove:
        path.unlink(missing_ok=True)
        click.echo(f"Removed {path}.")
        return
    secret = sys.stdin.readline().strip()
    if not secret:
        raise click.UsageError("no secret on stdin: echo SECRET | neuronova config client-secret")
    write_private_file(path, secret.encode())
    click.echo(f"Stored in {path} (mode 0600). Restart the appliance to use it.")
