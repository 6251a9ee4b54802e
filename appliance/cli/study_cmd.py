"""``study delete`` and ``retention``: remove studies from the archive, the worklist and
the disk."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.options import cli_user, home_option, settings_from
from appliance.home import require_initialized
from appliance.ingest.journal import Journal
from appliance.lifecycle.deletion import delete_study
from appliance.lifecycle.retention import apply_retention, expired_studies


@click.group()
def study() -> None:
    """Studies in the archive."""


@study.command("delete")
@click.argument("study_uid", metavar="UID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@home_option
def delete(study_uid: str, yes: bool, home: Path | None) -> None:
    """Delete study UID: Orthanc's copy, frame files, JPEGs, journal and worklist rows and
    spool files. The deletion is audited; it cannot be undone."""
    settings = settings_from(home)
    journal = Journal(require_initialized(settings).database_file)
    row = journal.read(
        lambda db: db.execute(
            "SELECT patient_name, patient_id, study_date FROM studies WHERE study_uid = ?",
            [study_uid],
        ).fetchone()
    )
    who = f"patient {row[0]!r} (ID {row[1]!r}), study date {row[2] or '?'}" if row else "?"
    if not yes:
        click.confirm(f"Delete study {study_uid} of {who}? This cannot be undone", abort=True)
    try:
        done = delete_study(settings, journal, study_uid, cli_user())
    except ValueError as exc:
        raise click.UsageError(f"{exc} (UIDs are digits and dots)") from None
    click.echo(
        f"Deleted study {done.study_uid} (patient ID {done.patient_id!r}): {done.instances} "
        f"instances, {done.bytes_freed / 1e6:.1f} MB of frame files, in {done.seconds:.2f} s."
    )


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list the studies that would be deleted.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@home_option
def retention(dry_run: bool, yes: bool, home: Path | None) -> None:
    """Delete the studies older than [retention] years (by [retention] by: study_date or
    received). The running worker does this hourly when years is above 0."""
    settings = settings_from(home)
    if not settings.retention.years:
        raise click.ClickException(
            "retention is off: set [retention] years (and by) in neuronova.toml first"
        )
    journal = Journal(require_initialized(settings).database_file)
    expired = expired_studies(settings, journal)
    rule = f"older than {settings.retention.years} years by {settings.retention.by}"
    click.echo(f"{len(expired)} studies {rule}:")
    for s in expired:
        received = (s["received_at"] or "")[:10]
        click.echo(f"  {s['study_uid']}  {s['study_date'] or '-':8}  {received}  "
                   f"{s['patient_id']}  {s['patient_name']}")  # fmt: skip
    if dry_run or not expired:
        return
    if not yes:
        click.confirm(f"Delete these {len(expired)} studies? This cannot be undone", abort=True)
    done = apply_retention(settings, journal)
    click.echo(f"Deleted {len(done)} of {len(expired)} studies.")
