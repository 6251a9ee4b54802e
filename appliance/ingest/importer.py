"""Importing an existing archive (a folder tree of DICOM files) through the ingest pipeline.

Each file goes through :meth:`appliance.ingest.intake.Ingest.accept`, exactly like an object a
modality sends: durable spool file, journal row, queued task. The importer only decides
which files to offer, checks each one first (a DICOM Part 10 file, not a DICOMDIR, with
its UIDs, not cut short) and reports what happened to every file.
"""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import sqlite_utils
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import DeflatedExplicitVRLittleEndian, MediaStorageDirectoryStorage

from appliance.config import Settings
from appliance.ingest.header import Received, describe
from appliance.ingest.intake import Ingest
from appliance.ingest.journal import FAILED, STORED
from appliance.ingest.spool import SpoolFull

SOURCE = "import"
PREAMBLE = 128
MAGIC = b"DICM"
UNDEFINED_LENGTH = 0xFFFFFFFF
CHUNK = 500


class UnusableFile(Exception):
    """A DICOM file that cannot be imported; the message says why."""


@dataclass(frozen=True)
class ImportFailure:
    """One file (or folder) that was not imported, and why."""

    path: Path
    reason: str


@dataclass
class ImportReport:
    """What an import did, file by file, and what the pipeline made of it so far.

    ``already_archived`` and ``duplicates`` are included in ``imported``: such files are
    imported again (the newest copy of a SOP Instance UID wins). ``stored``,
    ``transcoded``, ``kept`` and ``pending`` count distinct objects, not files.
    """

    root: Path
    found: int = 0
    imported: int = 0
    not_dicom: int = 0
    dicomdir: int = 0
    already_archived: int = 0
    duplicates: int = 0
    failures: list[ImportFailure] = field(default_factory=list)
    # Files the overwrite policy ([dicom] overwrite) held back for an admin: they would
    # replace an instance archived from another source or change a study's patient.
    held: list[ImportFailure] = field(default_factory=list)
    stopped: str | None = None
    not_attempted: int = 0
    objects: int = 0
    stored: int = 0
    transcoded: int = 0
    pending: int = 0

    @property
    def kept(self) -> int:
        """Stored objects kept as received (not transcoded)."""
        return self.stored - self.transcoded


def find_files(root: Path, on_error: Callable[[Path, str], None]) -> list[Path]:
    """Every file under ``root`` (or ``root`` itself), in sorted order.

    Symbolic links are followed, each folder is visited once (no loops). Sockets, pipes
    and devices are left out; broken links are kept so that reading them reports why.
    ``on_error`` receives the folders that cannot be listed.
    """
    if not root.is_dir():
        return [root]
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def unlisted(exc: OSError) -> None:
        on_error(Path(exc.filename), f"cannot list the folder: {exc.strerror}")

    for folder, dirs, names in os.walk(root, onerror=unlisted, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        found += [Path(folder, name) for name in sorted(names) if _maybe_file(Path(folder, name))]
    return found


def _maybe_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return True


def read_object(path: Path) -> tuple[bytes, Dataset] | None:
    """The bytes and parsed header of a DICOM Part 10 file.

    Parameters
    ----------
    path
        The file to read.

    Returns
    -------
    ``None`` when the file is not DICOM: it lacks the 128-byte preamble followed by
    ``DICM`` (PS3.10 7.1), as pydicom's ``dcmread(force=False)`` requires.

    Raises
    ------
    UnusableFile
        The file starts like DICOM but cannot be parsed, or ends inside an element.
    OSError
        The file cannot be read.
    """
    with open(path, "rb") as source:
        head = source.read(PREAMBLE + len(MAGIC))
        if head[PREAMBLE:] != MAGIC:
            return None
        data = head + source.read()
    fp = io.BytesIO(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            cut = _cut_short(fp, ds, len(data))
        except Exception as exc:  # pydicom raises many exception types on damaged files
            raise UnusableFile(f"not readable as DICOM ({exc.__class__.__name__}: {exc})") from exc
    if cut or any("End of file" in str(w.message) for w in caught):
        raise UnusableFile("the file is cut short (an incomplete copy?)")
    return data, ds


def _cut_short(fp: io.BytesIO, header: Dataset, size: int) -> bool:
    """True when the file looks like a partial copy.

    pydicom returns short values silently, so lengths are checked here: the last header
    element, the pixel data element (where ``stop_before_pixels`` left ``fp``) or, for an
    object without pixel data, the few bytes after the last element; an image (Rows,
    Columns) without pixel data is cut short too. Other objects cut exactly between two
    elements cannot be told from complete ones.
    """
    last = header.get_item(max(header.keys())) if len(header) else None
    if _short(last):
        return True
    if fp.tell() < size:
        try:
            pixels = next(data_element_generator(fp, *header.original_encoding), None)
        except EOFError:
            return True
        return pixels is None or _short(pixels)
    if header.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False  # positions are in the inflated stream; zlib refuses a cut stream
    return _ends_before(last, size) or ("Rows" in header and "Columns" in header)


def _short(element: object) -> bool:
    return (
        isinstance(element, RawDataElement)
        and element.length != UNDEFINED_LENGTH
        and len(element.value or b"") < element.length
    )


def _ends_before(element: object, size: int) -> bool:
    """True when fewer than 8 bytes (not a whole element header) follow ``element``."""
    if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
        return False
    return 0 < size - (element.value_tell + element.length) < 8


class _NotDicom(Exception):
    """Not a DICOM file: skipped and counted."""


class _Dicomdir(Exception):
    """A DICOMDIR (an index of a DICOM medium, not an object): skipped and counted."""


def identify(ds: Dataset) -> Received:
    """The identity of a parsed header, checked for import.

    Raises :class:`UnusableFile` when a UID or the transfer syntax is missing.
    """
    try:
        item = describe(ds)
    except ValueError as exc:
        raise UnusableFile(str(exc)) from None
    if not item.transfer_syntax:
        raise UnusableFile("its file meta information has no Transfer Syntax UID")
    return item


def _load(path: Path) -> tuple[bytes, Dataset, Received]:
    if path.name.upper() == "DICOMDIR":
        raise _Dicomdir
    try:
        read = read_object(path)
    except OSError as exc:
        raise UnusableFile(f"cannot read the file: {exc.strerror or exc}") from None
    if read is None:
        raise _NotDicom
    data, ds = read
    meta = getattr(ds, "file_meta", Dataset())
    if meta.get("MediaStorageSOPClassUID") == MediaStorageDirectoryStorage:
        raise _Dicomdir
    return data, ds, identify(ds)


class Importer:
    """Imports files into one data home's pipeline, filling an :class:`ImportReport`."""

    def __init__(self, settings: Settings, root: Path, ingest: Ingest) -> None:
        self.ingest = ingest
        self.policy = settings.dicom.overwrite
        self.report = ImportReport(root)
        self._by_sop: dict[str, Path] = {}
        self._processed = 0

    @property
    def objects(self) -> int:
        """How many distinct objects (SOP Instance UIDs) were imported so far."""
        return len(self._by_sop)

    def files(self) -> list[Path]:
        """The files to import, sorted; folders that cannot be listed count as failures."""
        files = find_files(self.report.root, self._fail)
        self.report.found = len(files)
        return files

    def add(self, path: Path) -> bool:
        """Import one file, or count why not.

        Returns ``False`` when the import must stop because the data home cannot take
        more (disk nearly full, database unwritable); the report says why.
        """
        try:
            data, ds, item = _load(path)
        except _NotDicom:
            self.report.not_dicom += 1
        except _Dicomdir:
            self.report.dicomdir += 1
        except UnusableFile as exc:
            self._fail(path, str(exc))
        else:
            if not self._accept(path, data, ds, item):
                return False
        self._processed += 1
        return True

    def _accept(self, path: Path, data: bytes, ds: Dataset, item: Received) -> bool:
        archived = self._state(item.sop_uid) == STORED
        try:
            refusal = self.ingest.accept(data, ds, SOURCE, self.policy)
        except (SpoolFull, OSError, sqlite3.Error) as exc:
            self.report.stopped = f"could not write to the data home: {exc}"
            return False
        except ValueError as exc:
            self._fail(path, str(exc))
        else:
            if refusal is None:
                self._count(path, item.sop_uid, archived)
            else:
                self.report.held.append(ImportFailure(path, refusal.reason))
        return True

    def _count(self, path: Path, sop_uid: str, archived: bool) -> None:
        self.report.imported += 1
        self.report.already_archived += archived
        self.report.duplicates += sop_uid in self._by_sop
        self._by_sop[sop_uid] = path

    def _fail(self, path: Path, reason: str) -> None:
        self.report.failures.append(ImportFailure(path, reason))

    def _state(self, sop_uid: str) -> str | None:
        rows = self._select("state", [sop_uid])
        return rows[0][1] if rows else None

    def wait(self, timeout: float, interval: float = 1.0) -> Iterator[int]:
        """Yield how many imported objects the pipeline has finished (stored or failed).

        Polls the journal every ``interval`` seconds until every object is finished or
        ``timeout`` seconds have passed.
        """
        deadline = time.monotonic() + timeout
        waiting = set(self._by_sop)
        while True:
            rows = self._select("state", waiting)
            waiting -= {sop for sop, state in rows if state in (STORED, FAILED)}
            yield len(self._by_sop) - len(waiting)
            if not waiting or time.monotonic() >= deadline:
                return
            time.sleep(interval)

    def finish(self) -> ImportReport:
        """Add what the journal says about the imported objects now, and return the report."""
        report = self.report
        report.objects = self.objects
        report.not_attempted = report.found - self._processed
        for sop_uid, state, action, error in self._select("state, action, error", self._by_sop):
            if state == STORED:
                report.stored += 1
                report.transcoded += action == "transcoded"
            elif state == FAILED:
                self._fail(self._by_sop[sop_uid], f"the pipeline failed: {error}")
            else:
                report.pending += 1
        return report

    def _select(self, columns: str, sop_uids: Iterable[str]) -> list[tuple]:
        """``sop_uid, <columns>`` of the journal rows of ``sop_uids``."""
        uids = list(sop_uids)

        def query(db: sqlite_utils.Database) -> list[tuple]:
            rows: list[tuple] = []
            for start in range(0, len(uids), CHUNK):
                chunk = uids[start : start + CHUNK]
                marks = ", ".join("?" for _ in chunk)
                sql = f"SELECT sop_uid, {columns} FROM instances WHERE sop_uid IN ({marks})"
                rows += db.execute(sql, chunk).fetchall()
            return rows

        return self.ingest.journal.read(query)
