"""``backup DEST``, ``backup verify|prune|push|migrate DEST``, ``backup key`` and
``restore SRC --home NEW``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from appliance.backup import offsite, snapshot
from appliance.backup.daily import FAILURES, backup_now, keep_of
from appliance.backup.manifest import backup_key
from appliance.backup.migrate import migrate, needs_migration
from appliance.backup.prune import Keep, prune
from appliance.backup.repository import Repository
from appliance.cli.options import home_option, settings_from
from appliance.config import Settings, load_settings
from appliance.home import require_initialized
from appliance.security.keys import load_or_create_secret, write_private_file
from appliance.store.orthanc import OrthancStore, OrthancUnavailable
from appliance.supervise.orthanc import orthanc_command, orthanc_environment, prepare_orthanc

ORTHANC_START_TIMEOUT = 60.0
KEY_ADVICE = (
    "Keep a copy of the backup key away from this machine (a password manager, or a sealed\n"
    "envelope with the first admin password): every backup is encrypted with it and no\n"
    "backup holds it. Without it, no backup (nor its off-site copy) can be read: after\n"
    "losing the machine a restore needs it, in a file:\n"
    "  neuronova restore SRC --home NEW --key-file FILE"
)


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
      neuronova backup verify DEST   decrypt and re-check every object in DEST
      neuronova backup prune DEST    drop snapshots outside the retention
      neuronova backup push DEST     copy DEST to the rclone remote ([backup] remote)
      neuronova backup migrate DEST  encrypt a backup taken before backups were encrypted
      neuronova backup key           show the key restore needs, to keep a copy off the box
    Backups are encrypted and authenticated with the home's backup key
    (HOME/secrets/backup-key): without it, DEST and its off-site copy reveal nothing, and
    cannot be restored. Keep a copy of the key away from the box (`backup key`).
    """


@backup.command("create", short_help="Take a snapshot into DEST (same as `backup DEST`).")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@home_option
def create(dest: Path, home: Path | None) -> None:
    """Take a snapshot of the running home into DEST; only new content is copied."""
    settings = settings_from(home)
    require_initialized(settings)
    try:
        with _bar("Backing up") as progress:
            done = backup_now(settings, dest, progress)
    except FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"Snapshot {done['snapshot']}: {done['files']} files, {done['instances']} Orthanc "
        f"instances, {done['bytes_copied']} bytes copied in {done['seconds']:.1f} s "
        f"({done['files_examined']} files examined, {done['orthanc_asked']} instances asked "
        f"about{'; every file checked' if done['full_walk'] else ''})."
    )
    if done["orthanc_listing"]:
        click.echo(f"Every Orthanc instance was asked about: {done['orthanc_listing']}.")


def keep_options(command: Callable) -> Callable:
    """``--keep-daily`` and ``--keep-weekly``, defaulting to ``[backup]`` of the home."""
    daily = click.option(
        "--keep-daily",
        type=click.IntRange(min=1),
        help="Days to keep a snapshot of (default: [backup] keep_daily).",
    )
    weekly = click.option(
        "--keep-weekly",
        type=click.IntRange(min=0),
        help="ISO weeks to keep one of (default: [backup] keep_weekly).",
    )
    return weekly(daily(command))  # fmt: skip


def _keep(home: Path | None, daily: int | None, weekly: int | None) -> Keep:
    default = keep_of(settings_from(home))
    return Keep(default.daily if daily is None else daily,
                default.weekly if weekly is None else weekly)  # fmt: skip


@backup.command("prune", short_help="Drop snapshots outside the retention, and their objects.")
@click.argument("dest", type=click.Path(file_okay=False, exists=True, path_type=Path))
@keep_options
@click.option("--dry-run", is_flag=True, help="List what would go; remove nothing.")
@home_option
def prune_cmd(dest: Path, keep_daily: int | None, keep_weekly: int | None, dry_run: bool,
              home: Path | None) -> None:  # fmt: skip
    """Keep the newest snapshot of each of the last N days and M ISO weeks (that have one);
    remove the other snapshots, then every object no kept snapshot names."""
    _require_repository(dest)
    try:
        result = prune(_home_repository(dest, home), _keep(home, keep_daily, keep_weekly),
                       dry_run)  # fmt: skip
    except FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "Would remove" if dry_run else "Removed"
    for name in result.removed:
        click.echo(f"{verb.split()[-1].lower()} snapshot {name}")
    click.echo(f"{verb} {len(result.removed)} snapshots and {result.objects} objects "
               f"({result.bytes_freed} bytes); {len(result.kept)} snapshots kept.")  # fmt: skip


@backup.command("push", short_help="Copy a backup to the off-site rclone remote.")
@click.argument("dest", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--remote", help="rclone remote path (default: [backup] remote), e.g. gcs:b/nn.")
@keep_options
@home_option
def push_cmd(dest: Path, remote: str | None, keep_daily: int | None, keep_weekly: int | None,
             home: Path | None) -> None:  # fmt: skip
    """Copy DEST's objects, then its snapshots, to the remote; then prune the remote to the
    retention. Credentials come from [backup] rclone_config (0600), never the command line."""
    settings = settings_from(home)
    target = offsite.Remote.from_settings(settings, remote)
    if not target.path:
        raise click.UsageError("no remote: set [backup] remote or pass --remote NAME:PATH.")
    _require_repository(dest)
    try:
        result = offsite.push(_home_repository(dest, home), target,
                              _keep(home, keep_daily, keep_weekly), _progress_line)  # fmt: skip
    except FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        click.echo(err=True)
    click.echo(f"Pushed {dest} to {target.path}: snapshots kept there {result.snapshots}, "
               f"removed {len(result.removed)} (and {result.objects_removed} objects only they "
               "named).")  # fmt: skip


def _progress_line(line: str) -> None:
    """rclone's statistics, redrawn on one line of stderr."""
    click.echo(f"\rPushing: {line}\x1b[K", nl=False, err=True)


def _home_repository(dest: Path, home: Path | None) -> Repository:
    """DEST, its signed manifests checked with the backup key of the home (if it has one)."""
    return Repository(dest, backup_key(settings_from(home).layout))


def _require_repository(dest: Path) -> None:
    """Refuse a folder without encrypted snapshots, saying how to encrypt an older one."""
    if Repository(dest).snapshot_names():
        return
    if needs_migration(dest):
        raise click.ClickException(
            f"{dest} is a backup from before backups were encrypted: encrypt it first with "
            f"`neuronova backup migrate {dest}` (the next backup into it does it too)."
        )
    raise click.ClickException(f"{dest} holds no NeuroNova backup (no snapshot in it).")


@backup.command("migrate", short_help="Encrypt a backup taken before backups were encrypted.")
@click.argument("dest", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--allow-unsigned", is_flag=True,
              help="Also encrypt snapshots taken before snapshots were signed.")  # fmt: skip
@home_option
def migrate_cmd(dest: Path, allow_unsigned: bool, home: Path | None) -> None:
    """Encrypt every snapshot of DEST with the home's backup key, in place, then remove the
    unencrypted files. Each snapshot is checked as a restore checks it first; interrupted,
    run it again: it goes on where it stopped. After the next push, the off-site copy
    holds no unencrypted file either."""
    if not needs_migration(dest):
        raise click.ClickException(f"{dest} holds no unencrypted snapshot: nothing to migrate.")
    layout = require_initialized(settings_from(home))
    try:
        with _bar("Encrypting") as progress:
            done = migrate(dest, backup_key(layout, create=True), progress, allow_unsigned)
    except FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Encrypted {done.snapshots} snapshots of {dest} ({done.objects} objects, "
               f"{done.bytes_encrypted} bytes); the unencrypted files were removed. Push it "
               "(`neuronova backup push`) to replace an unencrypted off-site copy.")  # fmt: skip


@backup.command("key", short_help="Show the home's backup key, to keep a copy off the box.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the key to this new file (mode 0600), not to stdout.")  # fmt: skip
@home_option
def key_cmd(output: Path | None, home: Path | None) -> None:
    """Print the home's backup key (made first, 0600, if the home has none yet), which
    encrypts every backup; `restore --key-file FILE` asks for it. The key alone goes to
    stdout (or to FILE with --output), the explanation to stderr."""
    layout = require_initialized(settings_from(home))
    key = load_or_create_secret(layout.backup_key_file, 32)
    if output is None:
        click.echo(key)
    elif output.exists() or output.is_symlink():
        raise click.ClickException(f"{output} already exists; name a new file.")
    else:
        write_private_file(output, key.encode() + b"\n")
        click.echo(f"Wrote the backup key to {output} (mode 0600).", err=True)
    click.echo(KEY_ADVICE, err=True)


def key_file_option(command: Callable) -> Callable:
    """``--key-file``: the backup key of the home the backup was taken from."""
    return click.option("--key-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                        help="The backup key of the home the backup was taken from "
                        "(HOME/secrets/backup-key there).")(command)  # fmt: skip


def _read_key(path: Path | None) -> bytes | None:
    if path is None:
        return None
    key = path.read_bytes().strip()
    if not key:
        raise click.UsageError(f"{path} is empty: it is not a backup key.")
    return key


@backup.command("verify", short_help="Re-check every object of a backup.")
@click.argument("dest", type=click.Path(file_okay=False, exists=True, path_type=Path))
@key_file_option
@home_option
def verify_cmd(dest: Path, key_file: Path | None, home: Path | None) -> None:
    """Decrypt every object of every snapshot in DEST, checking its authentication and
    SHA-256, with the backup key of --key-file (default: the home's key, if this machine
    has the home). A backup from before encryption: each checksum, and with a key, each
    snapshot's signature."""
    key = _read_key(key_file) or _home_key(home)
    try:
        with _bar("Verifying") as progress:
            problems = snapshot.verify(dest, progress, key)
    except FAILURES as exc:
        raise click.ClickException(str(exc)) from exc
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problems in {dest}; take a new backup.")
    click.echo(f"{dest}: every checksum matches.")


def _home_key(home: Path | None) -> bytes | None:
    """The home's backup key if this machine has the home and we may read it, else None."""
    try:
        return backup_key(settings_from(home).layout)
    except OSError:  # another user's home (e.g. the package's, as a login user)
        return None


@click.command("restore")
@click.argument("src", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The new, empty data home to restore into.")  # fmt: skip
@key_file_option
@click.option("--allow-unsigned", is_flag=True,
              help="Restore a snapshot taken before snapshots were signed.")  # fmt: skip
def restore(src: Path, home: Path, key_file: Path | None, allow_unsigned: bool) -> None:
    """Restore the newest snapshot in SRC into a new, empty data home.

    SRC is decrypted with the backup key of --key-file (the old home's
    HOME/secrets/backup-key, kept off the box). The snapshot is checked first (its
    manifest's authentication and content, and each object as it is read); if anything is
    wrong, or the restore fails, HOME is left as it was (absent or empty). The key becomes
    the new home's backup key.
    """
    key = _read_key(key_file)
    with snapshot.new_home(home):
        repo = snapshot.open_snapshots(src, key)
        manifest = snapshot.restore_files(repo, home, key, allow_unsigned)
        if not repo.trusted(manifest):
            click.echo(f"Warning: snapshot {manifest['name']} is not signed; nothing shows "
                       "that it was not changed since it was taken.", err=True)  # fmt: skip
        settings = load_settings(home, {"internal.orthanc_port": _free_port()})
        with orthanc_alone(settings) as store, _bar("Restoring images") as progress:
            count = snapshot.restore_instances(repo, manifest, store.store, progress)
    click.echo(
        f"Restored snapshot {manifest['name']} into {home}: {len(manifest['files'])} files, "
        f"{count} Orthanc instances. Start it with `neuronova run --home {home}`."
    )


@contextmanager
def _bar(label: str) -> Iterator[Any]:
    """A progress callback (done, total) drawing a click progress bar on stderr."""
    with click.progressbar(length=1, label=label, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        yield progress


@contextmanager
def orthanc_alone(settings: Settings) -> Iterator[OrthancStore]:
    """Orthanc alone on the restored home (a free loopback port), stopped afterwards."""
    prepare_orthanc(settings)
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
