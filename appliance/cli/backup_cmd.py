"""``backup DEST``, ``backup verify DEST`` and ``restore SRC --home NEW``."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from appliance.backup import snapshot
from appliance.backup.repository import BackupError
from appliance.backup.status import write_status
from appliance.cli.options import home_option, settings_from
from appliance.config import Settings, load_settings
from appliance.home import require_initialized
from appliance.store.orthanc import OrthancStore, OrthancUnavailable
from appliance.supervise.orthanc import orthanc_command, orthanc_environment, render_orthanc_conf

ORTHANC_START_TIMEOUT = 60.0


class _BackupGroup(click.Group):
    """``backup DEST`` takes a backup; ``backup verify DEST`` checks one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_BackupGroup)
def backup() -> None:
    """Back the data home up while NeuroNova runs, or check a backup.

    \b
      neuronova backup DEST          take a snapshot into DEST (incremental)
      neuronova backup verify DEST   re-check every checksum in DEST
    A backup holds the secrets (JWT key, Orthanc password, TLS key): keep it as safe
    as the home itself.
    """


@backup.command("create", short_help="Take a snapshot into DEST (same as `backup DEST`).")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@home_option
def create(dest: Path, home: Path | None) -> None:
    """Take a snapshot of the running home into DEST; only new content is copied."""
    settings = settings_from(home)
    layout = require_initialized(settings)
    try:
        with _bar("Backing up") as progress:
            result = snapshot.take_snapshot(settings, dest, progress)
    except (BackupError, OSError) as exc:
        write_status(layout, ok=False, dest=str(dest), snapshot=None, error=str(exc))
        raise click.ClickException(str(exc)) from exc
    record = dataclasses.asdict(result)
    record["snapshot"] = record.pop("name")
    write_status(layout, ok=True, dest=str(dest), **record)
    click.echo(
        f"Snapshot {result.name}: {result.files} files, {result.instances} Orthanc "
        f"instances, {result.bytes_copied} bytes copied in {result.seconds:.1f} s."
    )


@backup.command("verify", short_help="Re-check every checksum of a backup.")
@click.argument("dest", type=click.Path(file_okay=False, exists=True, path_type=Path))
def verify_cmd(dest: Path) -> None:
    """Re-read every file of every snapshot in DEST and compare its SHA-256."""
    with _bar("Verifying") as progress:
        problems = snapshot.verify(dest, progress)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problems in {dest}; take a new backup.")
    click.echo(f"{dest}: every checksum matches.")


@click.command("restore")
@click.argument("src", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The new, empty data home to restore into.")  # fmt: skip
def restore(src: Path, home: Path) -> None:
    """Restore the newest snapshot in SRC into a new, empty data home."""
    manifest = snapshot.restore_files(src, home)
    settings = dataclasses.replace(load_settings(home, {}), orthanc_port=_free_port())
    with _orthanc(settings) as store, _bar("Restoring images") as progress:
        count = snapshot.restore_instances(src, manifest, store.store, progress)
    click.echo(
        f"Restored snapshot {manifest['name']} into {home}: {len(manifest['files'])} files, "
        f"{count} Orthanc instances. Start it with `neuronova run --home {home}`."
    )


@contextmanager
def _bar(label: str) -> Iterator[Any]:
    """A progress callback (done, total) drawing a click progress bar on stderr."""
    with click.progressbar(length=1, label=label, file=click.get_text_stream("stderr")) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield progress


@contextmanager
def _orthanc(settings: Settings) -> Iterator[OrthancStore]:
    """Orthanc alone on the restored home (a free loopback port), stopped afterwards."""
    render_orthanc_conf(settings)
    process = subprocess.Popen(orthanc_command(settings), env=orthanc_environment() or None,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        store = OrthancStore(settings)
        _wait_ready(store, process)
        yield store
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_ready(store: OrthancStore, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + ORTHANC_START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            store.instance_ids()
            return
        except OrthancUnavailable:
            time.sleep(0.1)
    raise click.ClickException("Orthanc did not start on the restored home; "
                               "check that `neuronova run` works on this machine.")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
