"""``audit``: the audit trail (security events and reads of patient data), latest first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from appliance.cli.options import home_database, home_option, limit_option, since_option
from appliance.security import audit as trail


@click.command()
@home_option
@since_option("events")
@click.option(
    "--event",
    type=click.Choice(trail.EVENTS),
    metavar="NAME",
    default=None,
    help=f"Only events of this kind: {', '.join(trail.EVENTS)}.",
)
@click.option("--user", metavar="NAME", default=None, help="Only events of this user name.")
@click.option("--study", metavar="UID", default=None, help="Only events about this study.")
@click.option("--patient", metavar="ID", default=None, help="Only events about this patient ID.")
@limit_option(50, "At most this many events.")
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Output: a table, JSON or CSV (for export).",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
def audit(
    home: Path | None,
    since: str | None,
    event: str | None,
    user: str | None,
    study: str | None,
    patient: str | None,
    limit: int,
    output: str,
    as_json: bool,
) -> None:
    """Show the audit trail: logins, refused requests, admin changes, shares, and who
    read which patient's studies (first read per session, searches with their filters).

    Repeated events are counted on one row (COUNT). Text is printed with control
    characters escaped (\\n, \\u0085), so no value can break a line.

    \b
    Examples:
      neuronova audit --since 1h
      neuronova audit --event login_failed --since 2d
      neuronova audit --patient PID0042 --since 30d
      neuronova audit --event study_read --format csv > reads.csv
    """
    rows = trail.recent(
        home_database(home),
        since=since,
        event=event,
        username=user,
        study_uid=study,
        patient_id=patient,
        limit=limit,
    )
    if as_json or output == "json":
        click.echo(json.dumps(rows, indent=2))
    elif output == "csv":
        click.echo(trail.to_csv(rows), nl=False)
    elif not rows:
        click.echo("No audit events" + (f" since {since}" if since else "") + ".")
    else:
        _print_table(rows)


def _print_table(rows: list[dict[str, Any]]) -> None:
    click.echo(f"{'TIME (UTC)':<20} {'EVENT':<16} {'COUNT':>5} {'USER':<20} {'CLIENT':<16} DETAIL")
    for row in rows:
        when = row["last_ts"][:19].replace("T", " ")
        fields = {"study": row["study_uid"], "patient": row["patient_id"], **row["detail"]}
        detail = " ".join(
            f"{key}={_text(value)}" for key, value in sorted(fields.items()) if value is not None
        )
        click.echo(
            f"{when:<20} {_text(row['event']):<16} {row['count']:>5} "
            f"{_text(row['username'] or '-'):<20} {_text(row['client'] or '-'):<16} {detail}"
        )


def _text(value: Any) -> str:
    """One value on one line: strings escaped, anything else as compact JSON."""
    return trail.escape(value if isinstance(value, str) else json.dumps(value))
