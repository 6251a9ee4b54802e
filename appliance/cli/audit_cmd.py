"""``audit``: the security audit trail, newest first."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from appliance import audit as trail
from appliance.cli.options import home_database, home_option

DURATION_RE = re.compile(r"^(\d+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Since(click.ParamType):
    """A duration back from now (``30m``, ``1h``, ``2d``) or an ISO 8601 time."""

    name = "WHEN"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The ISO time (UTC, seconds) that audit timestamps are compared with."""
        text = str(value).strip()
        if match := DURATION_RE.match(text):
            return trail.iso_ago(int(match[1]) * UNIT_SECONDS[match[2]])
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{text!r} is neither a duration (45s, 30m, 1h, 2d) nor an ISO time "
                "(2026-01-31 or 2026-01-31T08:00, UTC unless an offset is given)",
                param,
                ctx,
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat(timespec="seconds")


@click.command()
@home_option
@click.option(
    "--since",
    type=Since(),
    default=None,
    help="Only events since then: 30m, 1h, 2d or an ISO time (UTC unless an offset is given).",
)
@click.option(
    "--event",
    type=click.Choice(trail.EVENTS),
    metavar="NAME",
    default=None,
    help=f"Only events of this kind: {', '.join(trail.EVENTS)}.",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10000),
    metavar="N",
    default=50,
    show_default=True,
    help="At most this many events.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON.")
def audit(
    home: Path | None, since: str | None, event: str | None, limit: int, as_json: bool
) -> None:
    """Show the audit trail: logins, refused requests, admin changes, shares.

    \b
    Examples:
      neuronova audit --since 1h
      neuronova audit --event login_failed --since 2d
      neuronova audit --event admin_change --json
    """
    rows = trail.recent(home_database(home), since=since, event=event, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("No audit events" + (f" since {since}" if since else "") + ".")
    else:
        _print_table(rows)


def _print_table(rows: list[dict[str, Any]]) -> None:
    click.echo(f"{'TIME (UTC)':<20} {'EVENT':<16} {'USER':<20} {'CLIENT':<16} DETAIL")
    for row in rows:
        when = row["ts"][:19].replace("T", " ")
        detail = " ".join(f"{key}={value}" for key, value in sorted(row["detail"].items()))
        click.echo(
            f"{when:<20} {row['event']:<16} {row['username'] or '-':<20} "
            f"{row['client'] or '-':<16} {detail}"
        )
