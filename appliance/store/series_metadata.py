"""Series metadata prepared at ingest: the DICOM JSON of every instance of a series, in one
gzipped file nginx sends as is (``docs/frames.md``, "Series metadata").

Layout, beside the frame files (:mod:`appliance.store.frame_files`)::

    <StudyUID>/<SeriesUID>/metadata.json.gz          the series' JSON array, gzipped
    <StudyUID>/<SeriesUID>/.instances/<SOPUID>.json  one instance's JSON object
    <StudyUID>/<SeriesUID>/.series.json.gz           the parts appended so far
    <StudyUID>/<SeriesUID>/.series.state             where and how the next append goes
    <StudyUID>/<SeriesUID>/.metadata.lock            held while the series file changes

Each instance's object is Orthanc's own answer to its WADO-RS metadata request, fetched by
the worker once the instance is stored, so the series file says field for field what
Orthanc's ``/metadata`` says; only the BulkDataURIs lose Orthanc's origin (they name our
routes from the root, ``/api/pacs/dicom-web/...``, whatever host the client used).

The series file grows with the series: each instance's part is appended to it
(:mod:`appliance.store.growing_gzip`), so that storing the n-th instance of a series costs
the same as storing the first, not a rebuild of n parts (which made a 300-slice series
quadratic: 40% of the worker's time). The file grown so far is kept as
``.series.json.gz``, with what the next append needs in ``.series.state``; the series file
is a hard link to it whenever it holds every instance the journal has as stored.

Two workers storing instances of one series at once both write their part, then append
in turn under an exclusive ``flock`` of the lock file: the one that comes second appends
what the first did not. The series file is there only when every instance the journal
holds as stored has its part; otherwise (instances stored before this existed, or a part
whose fetch failed, or a part not written yet) it is removed, and the gateway has Orthanc
answer. Whatever does not fit an append (a part replaced or removed, an instance gone
from the journal, a missing or stale state) rebuilds the grown file from the parts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import internal_locations
from appliance.durable import write_atomic
from appliance.store import growing_gzip
from appliance.store.frame_files import instance_dir

LOCATION = internal_locations.METADATA
FILE_NAME = "metadata.json.gz"
PARTS = ".instances"
LOCK = ".metadata.lock"
GROWN = ".series.json.gz"
STATE = ".series.state"
GZIP_LEVEL = 6


def served_relpath(study: str, series: str) -> str:
    """``<study>/<series>/metadata.json``: what nginx is asked for below :data:`LOCATION`
    (its ``gzip_static`` sends :data:`FILE_NAME`), for UIDs the caller has checked."""
    return f"{study}/{series}/{FILE_NAME.removesuffix('.gz')}"


def relative_bulk_uris(element: Any, origin: str) -> Any:
    """``element`` (DICOM JSON) with ``origin`` cut from the start of every BulkDataURI,
    in sequences too; changed in place and returned."""
    if isinstance(element, dict):
        uri = element.get("BulkDataURI")
        if isinstance(uri, str) and uri.startswith(origin):
            element["BulkDataURI"] = uri[len(origin) :]
        for value in element.values():
            relative_bulk_uris(value, origin)
    elif isinstance(element, list):
        for item in element:
            relative_bulk_uris(item, origin)
    return element


def update_series(
    root: str | os.PathLike[str],
    study: str,
    series: str,
    sop: str,
    instance: bytes | None,
    stored_sops: Callable[[], set[str]],
) -> bool:
    """Record one instance's metadata and append it to its series' file.

    Parameters
    ----------
    root
        Root of the frame tree.
    study, series, sop
        The instance's UIDs.
    instance
        Its DICOM JSON object (UTF-8), or None when it could not be had: the series file
        is then removed, so that Orthanc answers for the series.
    stored_sops
        The SOP Instance UIDs the journal holds as stored in the series, read under the
        lock (so that the last of two concurrent workers sees both).

    Returns
    -------
    bool
        Whether the series file now holds every stored instance.

    Raises
    ------
    ValueError
        A UID is invalid.
    """
    directory = instance_dir(root, study, series, sop).parent
    write_part(directory, sop, instance)
    with _locked(directory):
        wanted = stored_sops()
        grown = _Grown.load(directory)
        if grown is None or not grown.fits(directory, sop, wanted):
            return _rebuild(directory, wanted)
        news = sorted(uid for uid in wanted - grown.sops.keys() if _part(directory, uid).exists())
        return _publish(directory, grown.append(directory, news), wanted)


def prepare_series(
    root: str | os.PathLike[str],
    study: str,
    series: str,
    fetch: Callable[[str], bytes | None],
    stored_sops: Callable[[], set[str]],
) -> bool:
    """Prepare the file of a series stored before metadata was prepared at ingest: fetch
    (``fetch(sop)``, as for :func:`update_series`) the instances that have no part yet,
    then rebuild once. Returns whether the series file now holds every stored instance.

    Raises
    ------
    ValueError
        A UID is invalid.
    """
    directory = None
    for sop in sorted(stored_sops()):
        directory = instance_dir(root, study, series, sop).parent
        if not (directory / PARTS / f"{sop}.json").exists():
            write_part(directory, sop, fetch(sop))
    return directory is not None and rebuild(directory, stored_sops)


def write_part(directory: Path, sop: str, instance: bytes | None) -> None:
    """Write (or, for None, remove) one instance's part of the series in ``directory``."""
    parts = directory / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    if instance is not None:
        write_atomic(parts / f"{sop}.json", instance)
    else:
        (parts / f"{sop}.json").unlink(missing_ok=True)


def rebuild(directory: Path, stored_sops: Callable[[], set[str]]) -> bool:
    """Under the series' lock, grow its file anew from the parts of ``stored_sops()``, and
    publish it if every one has a part, else remove it; whether it was published."""
    with _locked(directory):
        return _rebuild(directory, stored_sops())


def _part(directory: Path, sop: str) -> Path:
    return directory / PARTS / f"{sop}.json"


def _rebuild(directory: Path, wanted: set[str]) -> bool:
    have = sorted(uid for uid in wanted if _part(directory, uid).exists())
    return _publish(directory, _Grown.empty().append(directory, have), wanted)


def _publish(directory: Path, grown: _Grown, wanted: set[str]) -> bool:
    """Make the series file the grown file when it holds every stored instance, else
    remove it; whether it was published."""
    served = directory / FILE_NAME
    if not wanted or grown.sops.keys() != wanted:
        served.unlink(missing_ok=True)
        return False
    link = directory / f".{FILE_NAME}.{secrets.token_hex(6)}.tmp"
    os.link(directory / GROWN, link)
    os.replace(link, served)
    return True


def _identity(path: Path) -> list[int]:
    """Which version of a part: a new one (written to a temporary file, then renamed) has
    a new inode and time."""
    found = path.stat()
    return [found.st_ino, found.st_mtime_ns]


@dataclass(frozen=True)
class _Grown:
    """The grown file's cut (:class:`growing_gzip.Cut`) and the parts it holds, in order,
    each with the version of its file (:func:`_identity`) that was appended."""

    cut: growing_gzip.Cut
    sops: dict[str, list[int]]

    @classmethod
    def empty(cls) -> _Grown:
        return cls(growing_gzip.EMPTY, {})

    @classmethod
    def load(cls, directory: Path) -> _Grown | None:
        """The state, if it describes the grown file as it is (size and trailer): a crash
        between writing the two, or a state from another file, gives None."""
        try:
            header, _, window = (directory / STATE).read_bytes().partition(b"\n")
            saved = json.loads(header)
            cut = growing_gzip.Cut(saved["body_end"], saved["crc"], saved["length"], window)
            tail = cut.tail(GZIP_LEVEL)
            with open(directory / GROWN, "rb") as grown:
                if os.fstat(grown.fileno()).st_size != cut.body_end + len(tail):
                    return None
                grown.seek(cut.body_end)
                if grown.read() != tail:
                    return None
            return cls(cut, dict(saved["sops"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def fits(self, directory: Path, sop: str, wanted: set[str]) -> bool:
        """Whether appending keeps the file true: every instance in it still stored, and
        ``sop``'s part, if the file has it, the version it has."""
        if not self.sops.keys() <= wanted:
            return False
        if sop not in self.sops:
            return True
        try:
            return _identity(_part(directory, sop)) == self.sops[sop]
        except FileNotFoundError:
            return False

    def append(self, directory: Path, sops: list[str]) -> _Grown:
        """Write the grown file with the parts of ``sops`` appended (a new file: the
        served file may be a link to the old one), then the state; the new grown file."""
        versions, parts = {}, []
        for sop in sops:
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile: not appended
                versions[sop] = _identity(_part(directory, sop))
                parts.append(_part(directory, sop).read_bytes())
        body, cut = growing_gzip.append(self.cut, parts, GZIP_LEVEL)
        grown = _Grown(cut, {**self.sops, **versions})
        _write_grown(directory, self.cut.body_end, body + cut.tail(GZIP_LEVEL))
        state = json.dumps({"body_end": cut.body_end, "crc": cut.crc, "length": cut.length,
                            "sops": list(grown.sops.items())}).encode()  # fmt: skip
        _write_unsynced(directory / STATE, state + b"\n" + cut.window)
        return grown


def _write_grown(directory: Path, keep: int, new: bytes) -> None:
    """A new grown file: the first ``keep`` bytes of the current one, then ``new``;
    fsynced, then renamed into place."""
    path = directory / GROWN
    tmp = directory / f".{GROWN}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as out:
            if keep:
                with open(path, "rb") as old:
                    _copy(old.fileno(), out.fileno(), keep)
            out.write(new)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy(source: int, target: int, count: int) -> None:
    """The first ``count`` bytes of ``source`` to ``target``, in the kernel."""
    offset = 0
    while offset < count:
        done = os.copy_file_range(source, target, count - offset, offset, offset)
        if done == 0:
            raise OSError(f"the grown series file ends before byte {count}")
        offset += done
    os.lseek(target, count, os.SEEK_SET)


def _write_unsynced(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` without an fsync: the state is checked against the grown
    file when read, and one lost to a crash costs a rebuild."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextmanager
def _locked(series_dir: Path) -> Iterator[None]:
    """Hold the series' lock file exclusively (other processes and threads wait)."""
    fd = os.open(series_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def instance_json(answer: bytes, origin: str) -> bytes:
    """The one object of Orthanc's instance-level ``/metadata`` answer (a JSON array),
    BulkDataURIs made relative to ``origin``, compact."""
    (element,) = json.loads(answer)
    return json.dumps(relative_bulk_uris(element, origin), separators=(",", ":")).encode()
