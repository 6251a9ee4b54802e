"""``frames relabel``: serve an existing archive's frames as HTJ2K with RPCL Options."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.home import require_initialized
from appliance.store.frame_files import frame_file_paths
from appliance.transcode.frames import relabel_frame_file


@click.group()
def frames() -> None:
    """The frame files nginx serves to viewers."""


@frames.command("relabel")
@home_option
def relabel(home: Path | None) -> None:
    """Type as HTJ2K with RPCL Options (1.2.840.10008.1.2.4.202) every prepared HTJ2K
    frame whose codestream already meets its conditions, so viewers load it progressively.

    Frames stored before the appliance did this at ingest get the new label in place,
    without re-encoding; safe while the appliance runs, and to run again (labelled frames
    are skipped). Frames that would need re-encoding are counted, not changed.
    """
    layout = require_initialized(settings_from(home))
    paths = frame_file_paths(layout.frames_dir)
    outcomes: Counter[str] = Counter()
    with click.progressbar(paths, label="Frames", show_pos=True) as bar:
        for path in bar:
            try:
                outcomes[relabel_frame_file(path)] += 1
            except FileNotFoundError:  # its instance was removed or replaced meanwhile
                outcomes["gone"] += 1
    click.echo(
        f"{len(paths)} frame files: {outcomes['relabelled']} relabelled, "
        f"{outcomes['already']} already labelled, {outcomes['other']} in other transfer "
        f"syntaxes, {outcomes['gone']} removed meanwhile."
    )
    if outcomes["re-encode"]:
        click.echo(
            f"{outcomes['re-encode']} HTJ2K frames do not meet the conditions (they need "
            "re-encoding, which this command does not do); they stay 1.2.840.10008.1.2.4.201."
        )
