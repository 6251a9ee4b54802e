"""The prepared frame files: where they live and how nginx sends them.

Layout, below the home's ``frames/`` folder (served by nginx's internal location
:data:`LOCATION`)::

    <StudyUID>/<SeriesUID>/<SOPUID>/frames/<n>      n = 1, 2, ...
    <StudyUID>/<SeriesUID>/<SOPUID>/rendered.jpg
    <StudyUID>/<SeriesUID>/<SOPUID>/thumbnail.jpg

Each frame file is a complete ``multipart/related`` body with a single part (the frame
bytes) delimited by :data:`BOUNDARY`, so nginx can send it as is with
``default_type 'multipart/related; type="application/octet-stream"; boundary=BOUNDARY'``.

The transcode writes these files (:mod:`appliance.transcode.frames`), the gateway names
them in ``X-Accel-Redirect`` and nginx's configuration serves them: all three take the
layout from here, and none of them needs the others.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from appliance import internal_locations
from appliance.uids import is_valid_uid

BOUNDARY = "neuronova-frame-3f9c1a7e52d84b06"
LOCATION = internal_locations.FRAMES
IMAGE_NAMES = {"rendered": "rendered.jpg", "thumbnail": "thumbnail.jpg"}


def frame_relpath(study: str, series: str, sop: str, n: int | str) -> str:
    """``<study>/<series>/<sop>/frames/<n>``, for UIDs the caller has already checked."""
    return f"{study}/{series}/{sop}/frames/{n}"


def image_relpath(study: str, series: str, sop: str, kind: str) -> str:
    """``<study>/<series>/<sop>/<kind>.jpg`` (``kind``: ``rendered`` or ``thumbnail``), for
    UIDs the caller has already checked."""
    return f"{study}/{series}/{sop}/{IMAGE_NAMES[kind]}"


def instance_dir(root: str | os.PathLike[str], study: str, series: str, sop: str) -> Path:
    """Directory holding the files of one instance: ``<root>/<study>/<series>/<sop>``.

    Raises
    ------
    ValueError
        A UID is not digits and dots or is longer than 64 characters.
    """
    for uid in (study, series, sop):
        if not is_valid_uid(uid):
            raise ValueError(f"not a valid DICOM UID (digits and dots, at most 64): {uid!r}")
    return Path(root, study, series, sop)


def frame_file_paths(root: str | os.PathLike[str]) -> list[Path]:
    """Every frame file below ``root``, sorted (neither temporary files nor studies being
    removed: their names start with a dot)."""
    return sorted(
        path
        for path in Path(root).glob("*/*/*/frames/*")
        if path.name.isdigit() and not path.relative_to(root).parts[0].startswith(".")
    )


def remove_study_files(root: str | os.PathLike[str], study: str) -> int:
    """Remove every frame file and JPEG of a study; returns the bytes freed (0 if none).

    The study's directory is first renamed away, so nginx never serves a half-removed
    study and a writer that recreates it later starts from an empty directory.

    Raises
    ------
    ValueError
        ``study`` is not a valid UID (no path is built from it then).
    """
    if not is_valid_uid(study):
        raise ValueError(f"not a valid DICOM UID (digits and dots, at most 64): {study!r}")
    directory = Path(root, study)
    trash = directory.with_name(f".{study}.removing-{secrets.token_hex(4)}")
    try:
        directory.rename(trash)
    except FileNotFoundError:
        return 0
    freed = sum(f.stat().st_size for f in trash.rglob("*") if f.is_file())
    shutil.rmtree(trash)
    return freed
