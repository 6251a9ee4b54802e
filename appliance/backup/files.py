"""Reading a repository's files without trusting them, and writing restored files safely."""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from appliance.backup.errors import BackupError

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # never a link, never a FIFO's wait


def open_plain(path: Path):
    """``path`` opened for reading in binary mode: never through a link, never a FIFO."""
    return open(os.open(path, READ_FLAGS), "rb")


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` + 1 bytes of the plain file ``path`` (the caller checks the size)."""
    try:
        with open_plain(path) as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise BackupError(f"{what}: {path} is not a plain file")
            return src.read(limit + 1)
    except OSError as exc:
        raise BackupError(f"cannot read {what} ({path}): {exc.strerror or exc}") from None


def write_new(home: Path, rel: str, mode: int, fill: Callable[[BinaryIO], None]) -> None:
    """Create ``home/rel`` (see :func:`create_inside`) with ``mode`` and ``fill`` it.

    ``fill`` raises :class:`BackupError` for a damaged content; the part written stays
    for the caller to remove (a restore removes the whole new home).
    """
    with open(create_inside(home, rel, mode), "wb") as dst:
        os.fchmod(dst.fileno(), mode)  # the mode as saved, whatever the umask
        fill(dst)


def create_inside(home: Path, rel: str, mode: int) -> int:
    """Create the new file ``home/rel`` (and its folders), never through a symbolic link.

    Each folder below ``home`` is opened with ``O_NOFOLLOW``, so a link planted anywhere
    on the way fails the call instead of leading out of ``home``. Returns the open fd.
    """
    *folders, name = rel.split("/")
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, dir_fd=fd)
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        return os.open(name, flags, mode, dir_fd=fd)
    finally:
        os.close(fd)


class ObjectReader:
    """What restore and verify ask of a repository's objects, whatever its format.

    A format says where an object lives (:meth:`object_path`), how many bytes its file
    holds for a content of ``size`` (:meth:`stored_size`), and how it is read and checked
    (:meth:`copy_to`, raising :class:`BackupError` when damaged).
    """

    def object_path(self, sha256: str) -> Path:
        raise NotImplementedError

    def stored_size(self, size: int) -> int:
        """The size of the file holding a content of ``size`` bytes."""
        raise NotImplementedError

    def copy_to(self, sha256: str, dst: BinaryIO | None) -> None:
        """Read an object (into ``dst``, if any); :class:`BackupError` if damaged."""
        raise NotImplementedError

    def problem(self, sha256: str, size: int) -> str | None:
        """None if the object is a plain file of the size a content of ``size`` bytes is
        stored in; otherwise what is wrong."""
        path = self.object_path(sha256)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return f"{path}: missing"
        if not stat.S_ISREG(info.st_mode):
            return f"{path}: not a plain file"
        if info.st_size != self.stored_size(size):
            return (f"{path}: {info.st_size} bytes, the manifest's {size} bytes are stored "
                    f"in {self.stored_size(size)}")  # fmt: skip
        return None

    def check(self, sha256: str, size: int) -> str | None:
        """:meth:`problem`, or a failed check of the content; None if the object is whole."""
        if problem := self.problem(sha256, size):
            return problem
        try:
            self.copy_to(sha256, None)
        except BackupError as exc:
            return str(exc)
        return None

    def copy_out(self, sha256: str, home: Path, rel: str, mode: int) -> None:
        """Write an object's content to the new file ``home/rel`` with ``mode``.

        No symbolic link is followed below ``home``; a content failing its check raises
        :class:`BackupError` (the part written stays for the caller to remove).
        """
        write_new(home, rel, mode, lambda dst: self.copy_to(sha256, dst))

    def read(self, sha256: str) -> bytes:
        """An object's content, checked."""
        buffer = io.BytesIO()
        self.copy_to(sha256, buffer)
        return buffer.getvalue()
