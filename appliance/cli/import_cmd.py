"""``import PATH``: bring an existing archive in through the ingest pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.config import Settings
from appliance.health.probes import worker_running
from appliance.home import require_initialized
from appliance.ingest.importer import Importer, ImportFailure, ImportReport
from appliance.ingest.intake import Ingest
from appliance.jobs.queue import create_queue

MAX_FAILURE_LINES = 50


@click.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@home_option
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Wait until the running appliance has stored every imported object [default: wait].",
)
@click.option(
    "--timeout",
    type=click.IntRange(min=1),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="How long --wait waits for the pipeline.",
)
def import_(path: Path, home: Path | None, wait: bool, timeout: int) -> None:
    """Import a folder tree (or one file) of DICOM files, such as a clinic's old archive.

    \b
    Every DICOM file goes through the same pipeline as objects sent by modalities:
    made durable in the spool, journaled, transcoded to HTJ2K lossless where possible
    and stored in the archive. Files that are not DICOM (no 128-byte preamble + "DICM")
    and DICOMDIR index files are skipped and counted. Objects an earlier import brought
    are imported again harmlessly (the newest copy wins), so an interrupted import can
    simply be run again. The overwrite policy ([dicom] overwrite) applies as to
    modalities: an object that would replace an instance a modality sent, or change an
    archived study's patient, is held for an admin (`neuronova held list`).

    \b
    If the appliance is running for this home, the command waits (--wait) until every
    object is stored; otherwise the objects stay safely in the spool and are processed
    at the next `neuronova run`. Exits 1 if any file failed, listing each one and why,
    or if --wait timed out.

    \b
    Example:
      neuronova import /mnt/old-pacs/export
    """
    settings = settings_from(home)
    require_initialized(settings)
    importer = Importer(settings, path, Ingest(settings, create_queue(settings)))
    with click.progressbar(
        importer.files(), label="Importing", show_pos=True, item_show_func=_name
    ) as progress:
        for file in progress:
            if not importer.add(file):
                break
    running = worker_running(settings)
    waited = wait and running and importer.objects > 0
    if waited:
        with click.progressbar(length=importer.objects, label="Storing", show_pos=True) as bar:
            for done in importer.wait(timeout):
                bar.update(done - bar.pos)
    report = importer.finish()
    _print_summary(report)
    _print_next_step(settings, report, running, wait)
    _print_files("Failed:", report.failures, report.root)
    _print_files("Held by the overwrite policy:", report.held, report.root)
    _exit_status(settings, report, waited, timeout)


def _name(path: Path | None) -> str:
    return path.name if path else ""


def _print_summary(report: ImportReport) -> None:
    click.echo(f"Found {report.found} file(s) in {report.root}:")
    rows = [
        ("imported", report.imported, ""),
        ("already in archive", report.already_archived, "imported again; the newest copy wins"),
        ("repeated in import", report.duplicates, "same SOP Instance UID; the last file wins"),
        ("skipped, not DICOM", report.not_dicom, ""),
        ("skipped, DICOMDIR", report.dicomdir, ""),
        ("failed", len(report.failures), ""),
        ("held for an admin", len(report.held), "see `neuronova held list`"),
        ("not attempted", report.not_attempted, ""),
    ]
    for label, count, note in rows:
        if count or label in ("imported", "failed"):
            click.echo(f"  {label:<20} {count:>6}" + (f"  ({note})" if note else ""))
    if report.objects:
        click.echo(
            f"Stored {report.stored} of {report.objects} object(s): {report.transcoded} "
            f"transcoded to HTJ2K, {report.kept} kept as received; {report.pending} waiting."
        )


def _print_next_step(settings: Settings, report: ImportReport, running: bool, wait: bool) -> None:
    if not report.pending:
        return
    if not running:
        click.echo(
            f"NeuroNova is not running for {settings.home}: the {report.pending} waiting "
            "object(s) are safely spooled and will be processed at the next `neuronova run`."
        )
    elif not wait:
        click.echo(
            "The running appliance is processing them; follow with `neuronova ingest status`."
        )


def _print_files(title: str, files: list[ImportFailure], root: Path) -> None:
    if not files:
        return
    click.echo(title)
    for failure in files[:MAX_FAILURE_LINES]:
        click.echo(f"  {_relative(root, failure.path)}: {failure.reason}")
    if len(files) > MAX_FAILURE_LINES:
        click.echo(f"  ... and {len(files) - MAX_FAILURE_LINES} more")


def _relative(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root)) if root.is_dir() else path.name
    except ValueError:
        return str(path)


def _exit_status(settings: Settings, report: ImportReport, waited: bool, timeout: int) -> None:
    if report.stopped:
        raise click.ClickException(
            f"the import stopped early: {report.stopped}. Free disk space in {settings.home} "
            "(or lower [dicom] min_free_mb), then run the same import again: files already "
            "imported are imported again harmlessly."
        )
    if report.failures:
        raise click.ClickException(
            f"{len(report.failures)} file(s) were not imported (listed above). Fix or remove "
            "them, then run the same import again, or retry pipeline failures with "
            "`neuronova ingest retry`."
        )
    if report.held:
        raise click.ClickException(
            f"{len(report.held)} object(s) were held by the overwrite policy ([dicom] "
            f"overwrite = {settings.dicom.overwrite}; listed above). Review them with `neuronova "
            "held list`, then `neuronova held accept ID` or `neuronova held discard ID`."
        )
    if waited and report.pending:
        raise click.ClickException(
            f"{report.pending} object(s) were not stored within {timeout} s. They are still "
            "being processed: follow with `neuronova ingest status`."
        )
