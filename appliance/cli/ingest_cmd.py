"""``ingest status|retry``: the progress of received objects, and re-running failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import sqlite_utils

from appliance.cli.options import audit_admin_change, home_option, limit_option, settings_from
from appliance.db import open_database
from appliance.health.probes import worker_running
from appliance.home import require_initialized
from appliance.ingest.intake import Ingest
from appliance.jobs.monitor import AUDITED_UIDS, QueueMonitor, QueueState, failed_objects, on
from appliance.jobs.queue import create_queue

FAILED_SHOWN = 20
STUDIES_SQL = """
SELECT i.study_uid, s.patient_name, s.patient_id, s.study_date, s.description,
       count(*) AS received,
       sum(i.state = 'stored' AND i.action = 'transcoded') AS transcoded,
       sum(i.state = 'stored') AS stored,
       sum(i.state = 'failed') AS failed,
       min(i.received_at) AS first, max(i.updated_at) AS last
FROM instances i LEFT JOIN studies s ON s.study_uid = i.study_uid
WHERE {where}
GROUP BY i.study_uid ORDER BY last DESC, i.study_uid LIMIT ?
"""
TOTALS_SQL = """
SELECT count(DISTINCT study_uid) AS studies, count(*) AS received,
       coalesce(sum(state = 'stored' AND action = 'transcoded'), 0) AS transcoded,
       coalesce(sum(state = 'stored'), 0) AS stored,
       coalesce(sum(state = 'failed'), 0) AS failed
FROM instances i WHERE {where}
"""


def _query(db: sqlite_utils.Database, sql: str, study: str | None, *args: Any) -> list[dict]:
    where, where_args = ("i.study_uid = ?", [study]) if study else ("1 = 1", [])
    return list(db.query(sql.format(where=where), [*where_args, *args]))


def ingest_progress(db: sqlite_utils.Database, study: str | None, limit: int) -> dict[str, Any]:
    """Totals, the ``limit`` most recently active studies, and every failed object.

    ``received`` counts every object received; ``transcoded`` and ``stored`` count the
    stored ones; ``waiting`` is what is neither stored nor failed yet.
    """
    totals = _query(db, TOTALS_SQL, study)[0]
    totals["waiting"] = totals["received"] - totals["stored"] - totals["failed"]
    return {
        "totals": totals,
        "studies": _query(db, STUDIES_SQL, study, limit),
        "failed": failed_objects(db, limit=None, study=study),
    }


@click.group()
def ingest() -> None:
    """Follow received objects through the pipeline, and retry the ones that failed.

    \b
    Each object received (from a modality, a web upload or `neuronova import`) is
    spooled, then transcoded to HTJ2K lossless where possible and stored. An object
    that fails keeps its spool file and its error until `neuronova ingest retry`.
    """


def _time(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


@ingest.command("status")
@home_option
@click.option("--study", metavar="UID", default=None, help="Only this Study Instance UID.")
@limit_option(20, "Show at most this many studies, most recently active first.")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (all failures).")
def status(home: Path | None, study: str | None, limit: int, as_json: bool) -> None:
    """Show per-study ingest progress, totals and the failed objects with their errors."""
    settings = settings_from(home)
    db = open_database(require_initialized(settings).database_file)
    progress = ingest_progress(db, study, limit)
    state = QueueMonitor(settings, create_queue(settings)).snapshot(on(db), failed_limit=0)
    if as_json:
        queue = {k: v for k, v in state.to_json().items() if k != "failed"}
        click.echo(json.dumps({**progress, "queue": queue}, indent=2))
        return
    if not progress["totals"]["received"]:
        _print_nothing(study, settings.dicom.ae_title, settings.dicom.port)
    else:
        _print_studies(progress["studies"])
        _print_totals(progress["totals"])
    _print_queue(state)
    _print_failed(progress["failed"])


def _print_nothing(study: str | None, ae_title: str, port: int) -> None:
    if study:
        raise click.ClickException(
            f"no object of study {study} was received; "
            "see `neuronova ingest status` for every study."
        )
    click.echo(
        f"No objects received yet. Modalities send to AE title {ae_title}, port {port}; "
        "an existing archive can be imported with `neuronova import PATH`."
    )


def _print_studies(studies: list[dict]) -> None:
    click.echo(
        f"{'FIRST (UTC)':<20} {'LAST (UTC)':<20} {'RECEIVED':>8} {'TRANSCODED':>10} "
        f"{'STORED':>6} {'FAILED':>6}  STUDY UID / PATIENT"
    )
    for s in studies:
        click.echo(
            f"{_time(s['first']):<20} {_time(s['last']):<20} {s['received']:>8} "
            f"{s['transcoded']:>10} {s['stored']:>6} {s['failed']:>6}  "
            f"{s['study_uid']} {s['patient_name'] or ''}".rstrip()
        )


def _print_totals(t: dict) -> None:
    kept = t["stored"] - t["transcoded"]
    click.echo(
        f"Total: {t['received']} object(s) in {t['studies']} study(ies): {t['stored']} stored "
        f"({t['transcoded']} transcoded to HTJ2K, {kept} kept as received), "
        f"{t['waiting']} waiting, {t['failed']} failed."
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _last(last: dict | None) -> str:
    if not last:
        return "no run recorded"
    outcome = "ok" if last["ok"] else f"FAILED: {last['error']}"
    return f"{_time(last['finished'])} {outcome}"


def _print_queue(state: QueueState) -> None:
    """The queue monitor's table: tasks by kind."""
    workers = f"{state.workers} worker(s) running" if state.workers else "no worker running"
    click.echo(f"Queue ({state.backend}, {workers}):")
    if state.error:
        click.secho(f"  {state.error}", fg="red")
    width = max(len("KIND"), *(len(k.kind) for k in state.kinds))
    click.echo(
        f"  {'KIND':<{width}} {'PENDING':>7} {'SCHEDULED':>9} {'RUNNING':>7} {'WAITING':>7} "
        f"{'OLDEST':>7} {'FAILED':>6}  LAST RUN (UTC)"
    )
    for k in state.kinds:
        click.echo(
            f"  {k.kind:<{width}} {_count(k.pending):>7} {_count(k.scheduled):>9} {k.running:>7} "
            f"{_count(k.waiting):>7} {_age(k.oldest_pending_age_s):>7} {_count(k.failed):>6}  "
            f"{_last(k.last) if k.periodic else ''}".rstrip()
        )
    if state.unclassified:
        click.echo(f"  ... and {state.unclassified} more task(s) not read by kind")


def _print_failed(failed: list[dict]) -> None:
    if not failed:
        return
    click.echo("Failed objects, newest first:")
    for row in failed[:FAILED_SHOWN]:
        click.echo(f"  {_time(row['updated_at'])}  {row['sop_uid']}  ({row['source']})")
        click.echo(f"      {row['error']}")
    if len(failed) > FAILED_SHOWN:
        click.echo(f"  ... and {len(failed) - FAILED_SHOWN} more (--json lists them all)")
    click.echo("Fix the cause, then run `neuronova ingest retry` to process them again.")


@ingest.command("retry")
@click.argument("sop_uids", metavar="[SOP_UID]...", nargs=-1)
@home_option
def retry(sop_uids: tuple[str, ...], home: Path | None) -> None:
    """Process failed objects again: all of them, or only the SOP_UIDs given.

    Their spool files were kept when they failed; they go back to the queue, where the
    running appliance's worker picks them up (or the next `neuronova run` does).
    """
    settings = settings_from(home)
    require_initialized(settings)
    ingest = Ingest(settings, create_queue(settings))
    again = ingest.retry_failed(list(sop_uids) or None)
    if again:
        with ingest.journal.transaction() as db:
            audit_admin_change(db, "ingest_retried", all=not sop_uids, count=len(again),
                               sop_uids=again[:AUDITED_UIDS])  # fmt: skip
    _report_retry(len(again), worker_running(settings))
    missing = sorted(set(sop_uids) - set(again))
    if missing:
        raise click.ClickException(
            f"not failed (or unknown), left alone: {', '.join(missing)}. "
            "See `neuronova ingest status` for the failed objects."
        )


def _report_retry(count: int, running: bool) -> None:
    if not count:
        click.echo("No failed object to retry.")
        return
    when = (
        "the running appliance's worker is processing them now"
        if running
        else "they will be processed at the next `neuronova run`"
    )
    click.echo(f"Queued {count} failed object(s) again; {when}.")
    click.echo("Follow them with `neuronova ingest status`.")
