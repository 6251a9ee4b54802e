"""The ``neuronova`` command line: a thin edge over the appliance's modules."""

from __future__ import annotations

from typing import Any

import click

from appliance.errors import ApplianceError
from appliance.version import current as app_version


class ApplianceGroup(click.Group):
    """A click group that reports :class:`ApplianceError` as ``Error: ...`` (exit 1)."""

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


def _register() -> None:
    from appliance.cli import (
        audit_cmd,
        backup_cmd,
        config_cmd,
        core,
        doctor_cmd,
        frames_cmd,
        held_cmd,
        import_cmd,
        ingest_cmd,
        logs_cmd,
        modality_cmd,
        services,
        study_cmd,
        tls_cmd,
        users,
    )

    for command in (
        core.init,
        core.run,
        core.status,
        core.version,
        config_cmd.config,
        users.user,
        services.service,
        tls_cmd.tls,
        modality_cmd.modality,
        import_cmd.import_,
        ingest_cmd.ingest,
        held_cmd.held,
        audit_cmd.audit,
        logs_cmd.logs,
        backup_cmd.backup,
        backup_cmd.restore,
        doctor_cmd.doctor,
        study_cmd.study,
        study_cmd.retention,
        frames_cmd.frames,
    ):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="neuronova")
