"""Off-site copies of a backup repository through rclone (any rclone remote, GCS included).

What goes off site is the encrypted repository as it is (:mod:`appliance.backup.repository`):
without the backup key the remote holds nothing readable. A push is, in order:

1. ``repository.json`` (the wrapped keys), refused if the remote holds another one;
2. ``rclone copy`` of ``data/`` (objects, never changed once written);
3. ``rclone copy`` of ``manifests/``, only once every object is there;
4. a prune of the remote by its own manifests (decrypted and checked like local ones):
   the manifests outside the retention, then the objects no kept manifest names;
5. the removal of an unencrypted copy pushed before the repository was migrated
   (``snapshots/``, then ``objects/``), once the encrypted snapshots are there.

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

from appliance.backup.crypto import encrypted_size
from appliance.backup.manifest import MAX_MANIFEST_BYTES
from appliance.backup.prune import Keep, kept_snapshots, referenced, stored_names
from appliance.backup.repository import KEY_RECORD, BackupError, Repository
from appliance.config import Settings
from appliance.errors import MissingBinaryError
from appliance.programs import Program, find_program

RCLONE = Program("rclone", "rclone")
LIST_TIMEOUT = 600.0
# Leftovers of an interrupted put or save (dot files) are never copied.
OBJECT_FILTERS = ("--exclude", ".*")
UNENCRYPTED = ("snapshots/", "objects/")  # a copy pushed before the migration, manifests first
NOT_FOUND = 3  # rclone's exit status for a directory that does not exist
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
        return cls((path or settings.backup.remote).rstrip("/"), settings.rclone_config_path)

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
            raise BackupError(f"{repo.root} holds no encrypted snapshot to copy; take a backup "
                              "first (it encrypts an older repository first).")  # fmt: skip
        top = rclone.listing(remote.path)
        _send_keys(rclone, repo, remote, top)
        for folder, there in ((repo.objects, "data"), (repo.snapshots, "manifests")):
            rclone.transfer("copy", folder, remote.child(there), progress, OBJECT_FILTERS)
        result = _prune_remote(rclone, repo, remote, keep, local[-1])
        for folder in (f for f in UNENCRYPTED if f in top):
            rclone.run("purge", remote.child(folder.rstrip("/")))
        return result


def _send_keys(rclone: _Rclone, repo: Repository, remote: Remote, top: list[str]) -> None:
    """Copy ``repository.json``, unless the remote holds another repository's."""
    record = repo.key_record.read_bytes()
    if KEY_RECORD in top:
        if rclone.cat(remote.child(KEY_RECORD), 4096) != record:
            raise BackupError(
                f"{remote.path} holds another backup repository (its {KEY_RECORD} differs "
                f"from {repo.key_record}); nothing was copied. Push to a path of its own."
            )
        return
    rclone.run("copyto", str(repo.key_record), remote.child(KEY_RECORD))


def _prune_remote(
    rclone: _Rclone, repo: Repository, remote: Remote, keep: Keep, newest: str
) -> PushResult:
    listed = rclone.lines("lsf", "--files-only", remote.child("manifests"))
    names = [n for n in listed if not n.startswith(".")]
    if newest not in names:
        raise BackupError(f"{remote.path} does not list snapshot {newest} after copying it; "
                          "nothing was pruned there. Check the remote and push again.")  # fmt: skip
    kept = kept_snapshots(names, keep)
    local = set(repo.snapshot_names())
    wanted = stored_names(repo, referenced(
        repo.manifest(n) if n in local else rclone.manifest(repo, remote, n) for n in kept
    ))  # fmt: skip
    removed = [n for n in names if n not in kept]
    rclone.delete(remote.child("manifests"), removed)
    objects = rclone.lines("lsf", "-R", "--files-only", *OBJECT_FILTERS, remote.child("data"))
    unused = [rel for rel in objects if rel.rsplit("/", 1)[-1] not in wanted]
    rclone.delete(remote.child("data"), unused)
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

    def listing(self, path: str) -> list[str]:
        """The files and folders (``name/``) at the top of ``path``; none if it is absent."""
        done = self._call("lsf", path)
        if done.returncode == NOT_FOUND:
            return []
        return self._checked(done, "lsf", path).decode(errors="replace").splitlines()

    def run(self, *args: str) -> str:
        return self._checked(self._call(*args), *args).decode(errors="replace")

    def cat(self, path: str, limit: int) -> bytes:
        """At most ``limit`` + 1 bytes of the remote file ``path``."""
        return self._checked(self._call("cat", "--count", str(limit + 1), path), "cat", path)

    def _call(self, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.command(*args), capture_output=True,
                                  timeout=LIST_TIMEOUT)  # fmt: skip
        except subprocess.TimeoutExpired:
            self.fail(f"rclone {args[0]}", [f"no answer in {LIST_TIMEOUT:.0f} s"])

    def _checked(self, done: subprocess.CompletedProcess, *args: str) -> bytes:
        if done.returncode != 0:
            self.fail(f"rclone {args[0]} {args[-1]}",
                      done.stderr.decode(errors="replace").splitlines())  # fmt: skip
        return done.stdout

    def manifest(self, repo: Repository, remote: Remote, name: str) -> dict:
        """A snapshot manifest read from the remote, checked like a local one (its parts
        read here when the local repository holds them, else from the remote)."""
        raw = self.cat(remote.child(f"manifests/{name}"), encrypted_size(MAX_MANIFEST_BYTES))

        def part(sha256: str, size: int) -> bytes:
            if repo.problem(sha256, size) is None:
                return repo.part(sha256, size)
            stored = repo.name_of(sha256)
            sealed = self.cat(remote.child(f"data/{stored[:2]}/{stored}"), encrypted_size(size))
            return repo.content_of(sealed, sha256)

        try:
            return repo.manifest_from(raw, name, part)
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
        raise BackupError(
            f"no rclone config at {path}: create it with "
            f"`rclone config --config {path}` ([backup] rclone_config)."
        ) from None
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
