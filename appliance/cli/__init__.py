"""The ``neuronova`` command line: a thin edge over the appliance's modules."""

from __future__ import annotations

import importlib
from typing import Any

import click

from appliance.errors import ApplianceError
from appliance.version import current as app_version

# Each command's module is imported only when that command runs (click's lazy-loading
# pattern): `neuronova service receiver` must not load the codec, FHIR or the web app,
# and a quick command starts in a fraction of the time. `neuronova --help` loads them all.
COMMANDS: dict[str, str] = {
    "init": "core:init",
    "run": "core:run",
    "status": "core:status",
    "version": "core:version",
    "config": "config_cmd:config",
    "user": "users:user",
    "service": "services:service",
    "tls": "tls_cmd:tls",
    "modality": "modality_cmd:modality",
    "import": "import_cmd:import_",
    "ingest": "ingest_cmd:ingest",
    "held": "held_cmd:held",
    "audit": "audit_cmd:audit",
    "logs": "logs_cmd:logs",
    "backup": "backup_cmd:backup",
    "restore": "backup_cmd:restore",
    "doctor": "doctor_cmd:doctor",
    "study": "study_cmd:study",
    "retention": "study_cmd:retention",
    "frames": "frames_cmd:frames",
}


class ApplianceGroup(click.Group):
    """The ``neuronova`` group: loads a command's module when the command is asked for,
    and reports :class:`ApplianceError` as ``Error: ...`` (exit 1)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = COMMANDS[cmd_name].split(":")
        module = importlib.import_module(f"appliance.cli.{module_name}")
        command: click.Command = getattr(module, attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApplianceError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=ApplianceGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=lambda ctx, _param, value: _print_version(ctx) if value else None,
    help="Show the version and exit.",
)
def cli() -> None:
    """NeuroNova: a DICOM receiver, HTJ2K archive and web viewer in one command.

    \b
    First time on this machine:
      neuronova run                 set up the data home and start everything
    Then browse to http://THIS-HOST:8080/ and log in as admin with the password
    printed at first start. Modalities send to AE title NEURONOVA, port 11112.
    """


def _print_version(ctx: click.Context) -> None:
    """``neuronova --version``: as ``neuronova version`` (asked only when given)."""
    if not ctx.resilient_parsing:
        click.echo(f"neuronova {app_version()}")
        ctx.exit()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="neuronova")
