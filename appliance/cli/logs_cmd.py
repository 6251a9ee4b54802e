"""``logs``: the services' logs from ``HOME/logs``, merged by time, optionally followed."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from, since_option
from appliance.supervise.log_reader import (
    COMPONENTS,
    DEFAULT_COMPONENTS,
    Line,
    follow,
    mark_ends,
    read_logs,
    render,
)


@click.command()
@click.argument(
    "component", type=click.Choice(list(COMPONENTS)), required=False, metavar="[COMPONENT]"
)
@home_option
@click.option("-f", "--follow", "following", is_flag=True, help="Keep showing new lines.")
@since_option("lines")
@click.option(
    "--for",
    "follow_for",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    default=None,
    help="With -f: stop following after this many seconds [default: until Ctrl-C].",
)
def logs(
    component: str | None,
    home: Path | None,
    following: bool,
    since: str | None,
    follow_for: float | None,
) -> None:
    """Show the logs of COMPONENT (default: all but nginx-access), oldest first.

    Rotated files are read in order (name.log.5 ... name.log.1, name.log) and the
    components merged by time; each line is prefixed with its component. The appliance's
    JSON lines are shown as text.
    """
    log_dir = settings_from(home).layout.log_dir
    if not log_dir.is_dir():
        raise click.ClickException(f"no logs in {log_dir}; start the appliance: neuronova run")
    components = (component,) if component else DEFAULT_COMPONENTS
    start = datetime.fromisoformat(since).timestamp() if since else None
    try:
        ends = mark_ends(log_dir, components) if following else None
        for line in read_logs(log_dir, components, start, ends):
            _show(line)
        if ends is not None:
            stop_at = time.monotonic() + follow_for if follow_for else None
            done = (lambda: time.monotonic() >= stop_at) if stop_at else (lambda: False)
            for line in follow(log_dir, components, done, ends):
                _show(line)
    except KeyboardInterrupt:  # Ctrl-C ends follow mode, quietly
        pass


def _show(line: Line) -> None:
    """Print a line (a JSON line's traceback on lines of its own), prefixed by component."""
    prefix = f"{line.component:<12} | "
    click.echo("\n".join(prefix + part for part in render(line.text).split("\n")))
