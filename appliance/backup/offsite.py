"""Off-site copies of a backup repository through rclone (any rclone remote, GCS included).

A push is ``rclone copy`` in two steps, then a prune of the remote by its own manifests:

1. ``objects/`` (content-addressed, never changed once written);
2. ``snapshots/``, only once every object is there;
3. the remote's manifests outside the retention, then the objects no kept remote
   manifest names.

So at every moment each manifest on the remote has all its objects, and the remote never
loses its newest snapshot. ``rclone sync`` would not keep that promise: it transfers
manifests and objects in one unordered pass (an interrupted sync can leave the newest
manifest without its objects), and it mirrors the local folder, so a lost or emptied
local repository would delete every off-site snapshot with it.

The remote's credentials live only in the rclone.conf (0600, outside every snapshot);
rclone's messages are passed through :func:`redact` before anyone sees them.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from appliance.backup.manifest import MAX_MANIFEST_BYTES, parse
from appliance.backup.prune import Keep, kept_snapshots, referenced
from appliance.backup.repository import BackupError, Repository
from appliance.config import Settings
from appliance.errors import MissingBinaryError
from appliance.programs import Program, find_program

RCLONE = Program("rclone", "rclone")
LIST_TIMEOUT = 600.0
# Leftovers of an interrupted put (repository.remove_leftovers) are never copied.
OBJECT_FILTERS = ("--exclude", ".*", "--exclude", "/tmp*/**")
SECRET_KEY = re.compile(r"pass|secret|token|key|credential|auth|bearer", re.IGNORECASE)
STATS_LINE = re.compile(r"^\s*[\d.]+ \S*B / ")  # "1.2 MiB / 3.4 MiB, 35%, ..."

Progress = Callable[[str], None]
"""Called with rclone's one-line transfer statistics, about once a second."""


@dataclass(frozen=True)
class Remote:
    """An rclone remote path (``NAME:PATH``) and the rclone.conf defining ``NAME``."""

    path: str
    config: Path

    @classmethod
    def from_settings(cls, settings: Settings, path: str | None = None) -> Remote:
        """``[backup] remote`` (or ``path``) with ``[backup] rclone_config``."""
        return cls((path or settings.backup_remote).rstrip("/"), settings.rclone_config_path)

    def child(self, folder: str) -> str:
        """``folder`` inside the remote path (``NAME:`` alone is the remote's root)."""
        return f"{self.path}{folder}" if self.path.endswith(":") else f"{self.path}/{folder}"


@dataclass(frozen=True)
class PushResult:
    """What a push left on the remote, and what its prune removed there."""

    snapshots: int
    removed: list[str]
    objects_removed: int


def push(repo: Repository, remote: Remote, keep: Keep, progress: Progress) -> PushResult:
    """Copy ``repo`` to ``remote`` (objects, then manifests), then prune the remote."""
    rclone = _Rclone(remote.config)
    with repo.locked():
        local = repo.snapshot_names()
        if not local:
            raise BackupError(f"{repo.root} holds no snapshot to copy; take a backup first.")
        rclone.transfer("copy", repo.objects, remote.child("objects"), progress, OBJECT_FILTERS)
        rclone.transfer("copy", repo.snapshots, remote.child("snapshots"), progress)
        return _prune_remote(rclone, repo, remote, keep, local[-1])


def _prune_remote(
    rclone: _Rclone, repo: Repository, remote: Remote, keep: Keep, newest: str
) -> PushResult:
    listed = rclone.lines("lsf", "--files-only", remote.child("snapshots"))
    names = [n.removesuffix(".json") for n in listed if n.endswith(".json")]
    if newest not in names:
        raise BackupError(f"{remote.path} does not list snapshot {newest} after copying it; "
                          "nothing was pruned there. Check the remote and push again.")  # fmt: skip
    kept = kept_snapshots(names, keep)
    local = set(repo.snapshot_names())
    wanted = referenced(
        repo.manifest(n) if n in local else rclone.manifest(remote, n, repo.key) for n in kept
    )
    removed = [n for n in names if n not in kept]
    rclone.delete(remote.child("snapshots"), [f"{n}.json" for n in removed])
    objects = rclone.lines("lsf", "-R", "--files-only", *OBJECT_FILTERS, remote.child("objects"))
    unused = [rel for rel in objects if rel.rsplit("/", 1)[-1] not in wanted]
    rclone.delete(remote.child("objects"), unused)
    return PushResult(len(kept), removed, len(unused))


class _Rclone:
    """rclone with one config file; every message it writes is redacted."""

    def __init__(self, config: Path) -> None:
        try:
            self.program = find_program(RCLONE)  # the bundle ships it; else the system's
        except MissingBinaryError as exc:
            raise BackupError(str(exc)) from None
        check_config(config)
        self.config = config
        self.secrets = config_secrets(config)

    def command(self, *args: str) -> list[str]:
        return [str(self.program), "--config", str(self.config), *args]

    def transfer(
        self, verb: str, source: Path, target: str, progress: Progress, extra: tuple = ()
    ) -> None:
        """``rclone VERB SOURCE TARGET``, its one-line statistics sent to ``progress``."""
        stats = ("--stats", "1s", "--stats-one-line", "-v")
        process = subprocess.Popen(self.command(verb, *stats, *extra, str(source), target),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, errors="replace")  # fmt: skip
        problems: list[str] = []
        assert process.stderr is not None
        for line in process.stderr:
            message = redact(line.rstrip().split(" : ", 1)[-1], self.secrets)
            if STATS_LINE.match(message):
                progress(message.strip())
            elif "ERROR" in line or "Failed" in line:
                problems.append(message.strip())
        if process.wait() != 0:
            self.fail(f"rclone {verb} to {target}", problems)

    def lines(self, *args: str) -> list[str]:
        """The output lines of a listing command."""
        return self.run(*args).splitlines()

    def run(self, *args: str) -> str:
        try:
            done = subprocess.run(self.command(*args), capture_output=True, text=True,
                                  errors="replace", timeout=LIST_TIMEOUT)  # fmt: skip
        except subprocess.TimeoutExpired:
            self.fail(f"rclone {args[0]}", [f"no answer in {LIST_TIMEOUT:.0f} s"])
        if done.returncode != 0:
            self.fail(f"rclone {args[0]} {args[-1]}", done.stderr.splitlines())
        return done.stdout

    def manifest(self, remote: Remote, name: str, key: bytes | None) -> dict:
        """A snapshot manifest read from the remote, checked like a local one."""
        raw = self.run("cat", "--count", str(MAX_MANIFEST_BYTES + 1),
                       remote.child(f"snapshots/{name}.json"))  # fmt: skip
        try:
            return parse(raw.encode(), name, key)
        except BackupError as exc:
            raise BackupError(f"{exc} (on {remote.path}); nothing was pruned there.") from None

    def delete(self, folder: str, names: list[str]) -> None:
        """Delete the files ``names`` (relative to ``folder``) on the remote."""
        if not names:
            return
        with tempfile.NamedTemporaryFile("w", suffix=".list") as listing:
            listing.write("\n".join(names) + "\n")
            listing.flush()
            self.run("delete", "--files-from-raw", listing.name, folder)

    def fail(self, what: str, problems: list[str]) -> NoReturn:
        last = redact(problems[-1].split(" : ", 1)[-1], self.secrets) if problems else "failed"
        raise BackupError(f"off-site copy: {what} failed: {last.strip()}")


def check_config(path: Path) -> None:
    """Refuse a missing rclone.conf, or one others may read (it holds credentials)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        raise BackupError(f"no rclone config at {path}: create it with "
                          f"`rclone config --config {path}` ([backup] rclone_config).") from None
    if mode & 0o077:
        raise BackupError(f"{path} holds the remote's credentials but has mode {mode:o}: "
                          f"run `chmod 600 {path}`.")  # fmt: skip


def config_secrets(path: Path) -> list[str]:
    """The values of an rclone.conf that may be credentials (passwords, keys, tokens)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise BackupError(f"{path} is not an rclone config: {exc.__class__.__name__}") from None
    return [value for section in parser.sections()
            for key, value in parser.items(section)
            if SECRET_KEY.search(key) and len(value) >= 4]  # fmt: skip


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
