"""``config show``, ``config reference``, ``config client-secret``,
``config fhir-push-authorization``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.config import render_toml
from appliance.config.reference import settings_table
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


@config.command("reference")
def reference() -> None:
    """Print every setting as a Markdown table: its [section] key in neuronova.toml, the
    NEURONOVA_* environment variable that overrides it, its default and its meaning.

    `neuronova config show` prints the values in effect on a home.
    """
    click.echo(settings_table(), nl=False)


@config.command("client-secret")
@click.argument("kind", type=click.Choice(["oidc", "smart"]))
@click.option("--remove", is_flag=True, help="Delete it: the appliance is a public client.")
@home_option
def client_secret(kind: str, remove: bool, home: Path | None) -> None:
    """Store the client secret for single sign-on (oidc) or the EHR (smart), read from
    stdin, in HOME/secrets (mode 0600). The web app reads it at its next start."""
    path = require_initialized(settings_from(home)).client_secret_file(kind)
    _store_secret(path, remove, "echo SECRET | neuronova config client-secret " + kind)
    if not remove:
        click.echo("Restart the appliance to use it.")


@config.command("fhir-push-authorization")
@click.option("--remove", is_flag=True, help="Delete it: push without credentials.")
@home_option
def fhir_push_authorization(remove: bool, home: Path | None) -> None:
    """Store the Authorization header value sent to [fhir] push_url (for example
    'Bearer TOKEN'), read from stdin, in HOME/secrets (mode 0600). Used from the next push."""
    path = require_initialized(settings_from(home)).fhir_push_authorization_file
    _store_secret(path, remove, "echo 'Bearer TOKEN' | neuronova config fhir-push-authorization")


def _store_secret(path: Path, remove: bool, usage: str) -> None:
    """Write the first line of stdin to ``path`` (mode 0600), or delete ``path``."""
    if remove:
        path.unlink(missing_ok=True)
        click.echo(f"Removed {path}.")
        return
    secret = sys.stdin.readline().strip()
    if not secret:
        raise click.UsageError(f"no secret on stdin: {usage}")
    write_private_file(path, secret.encode())
    click.echo(f"Stored in {path} (mode 0600).")
