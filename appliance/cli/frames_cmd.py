"""``frames relabel``: serve an existing archive's frames as HTJ2K with RPCL Options;
``frames metadata``: prepare the series metadata of an existing archive."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import click

from appliance.cli.options import home_option, settings_from
from appliance.home import require_initialized
from appliance.ingest.journal import stored_series
from appliance.store import series_metadata
from appliance.store.frame_files import frame_file_paths
from appliance.transcode.frames import relabel_frame_file
from appliance.transcode.pipeline import Pipeline


@click.group()
def frames() -> None:
    """The frame files nginx serves to viewers."""


@frames.command("relabel")
@click.option(
    "--reencode",
    is_flag=True,
    help="Also encode again (verified lossless) the HTJ2K frames that do not qualify.",
)
@home_option
def relabel(reencode: bool, home: Path | None) -> None:
    """Type as HTJ2K with RPCL Options (1.2.840.10008.1.2.4.202) every prepared HTJ2K
    frame whose codestream meets its conditions, so viewers load it progressively.

    Frames stored before the appliance did this at ingest get the new label in place,
    without re-encoding. With --reencode, the others (e.g. too few decomposition levels,
    or another progression order) are encoded again at low CPU priority, each verified to
    give the same pixels, and replaced. Safe while the appliance runs; stop it at any time
    and run it again to resume (finished frames are skipped by their first bytes).
    """
    layout = require_initialized(settings_from(home))
    if reencode:
        os.nice(10)  # behind ingest, which has a modality waiting
    paths = frame_file_paths(layout.frames_dir)
    outcomes: Counter[str] = Counter()
    with click.progressbar(paths, label="Frames", show_pos=True, show_eta=True) as bar:
        for path in bar:
            outcomes[relabel_frame_file(path, reencode)] += 1
    click.echo(
        f"{len(paths)} frame files: {outcomes['relabelled']} relabelled, "
        f"{outcomes['re-encoded']} re-encoded, {outcomes['already']} already labelled, "
        f"{outcomes['other']} in other transfer syntaxes, {outcomes['gone']} removed or "
        "replaced meanwhile."
    )
    if outcomes["re-encode"]:
        click.echo(
            f"{outcomes['re-encode']} HTJ2K frames do not meet the conditions and stay "
            "1.2.840.10008.1.2.4.201; run again with --reencode to encode them again."
        )
    if outcomes["failed"]:
        raise click.ClickException(
            f"{outcomes['failed']} frames could not be re-encoded exactly and were left "
            "as they are (see the warnings above)."
        )


@frames.command("metadata")
@home_option
def metadata(home: Path | None) -> None:
    """Prepare the metadata file of every series stored before the worker prepared it at
    ingest (until then Orthanc answers for those series). Needs Orthanc running (with
    `neuronova run`); safe while the appliance runs, and resumes where it stopped.
    """
    settings = settings_from(home)
    layout = require_initialized(settings)
    pipeline = Pipeline(settings)
    series = pipeline.journal.read(stored_series)
    todo = [uids for uids in series
            if not Path(layout.frames_dir, *uids, series_metadata.FILE_NAME).exists()]  # fmt: skip
    prepared = 0
    with click.progressbar(todo, label="Series", show_pos=True, show_eta=True) as bar:
        for study, uid in bar:
            prepared += pipeline.prepare_series_metadata(study, uid)
    click.echo(
        f"{len(series)} series: {len(series) - len(todo)} already prepared, {prepared} "
        f"prepared now, {len(todo) - prepared} left to Orthanc (it gave no metadata for "
        "some of their instances)."
    )
    if prepared < len(todo):
        raise click.ClickException("some series could not be prepared; run it again later.")
