"""Series metadata prepared at ingest: the DICOM JSON of every instance of a series, in one
gzipped file nginx sends as is (``docs/frames.md``, "Series metadata").

Layout, beside the frame files (:mod:`appliance.store.frame_files`)::

    <StudyUID>/<SeriesUID>/metadata.json.gz          the series' JSON array, gzipped
    <StudyUID>/<SeriesUID>/.instances/<SOPUID>.json  one instance's JSON object
    <StudyUID>/<SeriesUID>/.metadata.lock            held while the series file is rebuilt

Each instance's object is Orthanc's own answer to its WADO-RS metadata request, fetched by
the worker once the instance is stored, so the series file says field for field what
Orthanc's ``/metadata`` says; only the BulkDataURIs lose Orthanc's origin (they name our
routes from the root, ``/api/pacs/dicom-web/...``, whatever host the client used).

Two workers storing instances of one series at once both write their part, then rebuild
the series file in turn under an exclusive ``flock`` of the lock file: the one that comes
second reads both parts. The series file is written only when every instance the journal
holds as stored has its part; otherwise (instances stored before this existed, or a part
whose fetch failed) it is removed, and the gateway has Orthanc answer.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.durable import write_atomic
from appliance.store.frame_files import instance_dir

LOCATION = "/internal-metadata"
FILE_NAME = "metadata.json.gz"
PARTS = ".instances"
LOCK = ".metadata.lock"
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
    """Record one instance's metadata and rebuild its series' file.

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
    return rebuild(directory, stored_sops)


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
    """Under the series' lock, write its file from the parts if every instance in
    ``stored_sops()`` has one, else remove it; whether it was written."""
    parts = directory / PARTS
    with _locked(directory):
        wanted = stored_sops()
        have = {path.stem for path in parts.glob("*.json")}
        if not wanted or not wanted <= have:
            (directory / FILE_NAME).unlink(missing_ok=True)
            return False
        body = b"[" + b",".join((parts / f"{uid}.json").read_bytes() for uid in sorted(wanted))
        write_atomic(directory / FILE_NAME, gzip.compress(body + b"]", GZIP_LEVEL, mtime=0))
        return True


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
