"""A snapshot manifest is untrusted input: the schema and paths it must hold to be read.

A backup's folder, and its off-site copy above all, is where a manifest can be changed. So
restore, verify, prune and push read a manifest only through :func:`parse`, which refuses
the whole manifest, naming the entry, unless:

- it is at most :data:`MAX_MANIFEST_BYTES`, JSON, with exactly the keys and types below;
- every object is named by a SHA-256 (64 lowercase hex digits), never by a path;
- every file path is relative and normalised (no ``..``, ``.`` or empty component, no
  NUL, no leading ``/``), stays out of the folders a restore makes itself or skips, and
  is never both a file and a folder;
- a file's mode holds only the ordinary permission bits (0o777: no set-uid, set-gid or
  sticky bit).

Format 2 manifests are stored encrypted and authenticated
(:mod:`appliance.backup.repository`); format 1 ones, of repositories from before, in the
clear, signed with an HMAC (``mac``) since snapshots were signed (:func:`sign`,
:func:`authenticate`). What a manifest cannot prove alone (each object there with the
size it names, its content matching its digest) is checked against the repository when
read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.backup.errors import BackupError
from appliance.backup.frames_changes import MAX_PENDING
from appliance.backup.frames_changes import valid as valid_series
from appliance.backup.parts import Known, Read, join, valid_parts
from appliance.layout import HomeLayout
from appliance.security.keys import load_or_create_secret

FORMAT = 4  # 1: the unencrypted repositories' manifests (appliance.backup.legacy); 2: in one
# piece; 3: saved in parts (appliance.backup.parts); 4: each part's reference names its first
# key and entry count, and ``studies`` the study folders (appliance.backup.patch)
MAX_MANIFEST_BYTES = 1 << 30  # about 5 million Orthanc instances
MAX_OBJECT_SIZE = 1 << 44
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_TEXT = 4096
SECTIONS = ("files", "databases", "orthanc")
DATABASES = ("db/appliance.db", "db/queue.db")
# Regenerated, or taken by their own means; "rclone" (the off-site remote's credentials,
# [backup] rclone_config) stays out so that no backup opens the off-site store.
SKIPPED = ("run", "logs", "db", "orthanc", "rclone")
KEY_FILE = HomeLayout(Path(".")).backup_key_file.as_posix()  # never in a backup

HEX64 = re.compile(r"[0-9a-f]{64}")
ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SNAPSHOT = re.compile(r"[0-9A-Za-z._-]{1,64}")


def _octal(value: Any) -> str:
    return oct(value) if type(value) is int else _shown(value)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else f"{text[:297]}..."


@dataclass(frozen=True)
class Field:
    """One key of a manifest or of an entry: its test, and what it must be (for messages)."""

    check: Callable[[Any], bool]
    must_be: str
    show: Callable[[Any], str] = _shown


def _iso_time(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _integer(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: type(value) is int and low <= value <= high


def _matching(pattern: re.Pattern[str]) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and pattern.fullmatch(value) is not None


DIGEST = Field(_matching(HEX64), "a SHA-256 (64 lowercase hex digits)")
SIZE = Field(_integer(0, MAX_OBJECT_SIZE), f"a whole number of bytes up to {MAX_OBJECT_SIZE}")
TEXT = Field(lambda v: isinstance(v, str) and len(v) <= MAX_TEXT, f"text up to {MAX_TEXT} chars")
SEQ = _integer(0, (1 << 63) - 1)
WITNESS = {"seq": SEQ, "id": _matching(ORTHANC_ID),
           "type": _matching(re.compile(r"[A-Za-z]{1,64}")),
           "date": _matching(re.compile(r"[0-9T]{1,32}"))}  # fmt: skip
MAX_WITNESSES = 8
MTIME = _integer(-(1 << 63), (1 << 63) - 1)


def _orthanc_log(value: Any) -> bool:
    """``{"last": seq, "witnesses": [{"seq", "id", "type", "date"}, ...]}``
    (:mod:`appliance.backup.orthanc_log`)."""
    if not isinstance(value, dict) or set(value) != {"last", "witnesses"} or not SEQ(value["last"]):
        return False
    witnesses = value["witnesses"]
    return (
        isinstance(witnesses, list)
        and len(witnesses) <= MAX_WITNESSES
        and all(
            isinstance(w, dict) and set(w) == set(WITNESS) and all(WITNESS[k](w[k]) for k in w)
            for w in witnesses
        )
    )


def _frames_log(value: Any) -> bool:
    """``{"asked": ISO time, "pending": [[study UID, series UID], ...]}``
    (:mod:`appliance.backup.frames_changes`)."""
    return (
        isinstance(value, dict)
        and set(value) == {"asked", "pending"}
        and _iso_time(value["asked"])
        and isinstance(value["pending"], list)
        and len(value["pending"]) <= MAX_PENDING
        and all(map(valid_series, value["pending"]))
    )


def _studies(value: Any) -> bool:
    """The names of the folders below ``frames/`` (:mod:`appliance.backup.patch`)."""
    return isinstance(value, list) and all(
        isinstance(name, str) and "/" not in name and path_problem(f"frames/{name}") is None
        for name in value
    )


def _folders(value: Any) -> bool:
    """Folder path -> its mtime in ns (:mod:`appliance.backup.home_files`)."""
    return isinstance(value, dict) and all(
        path_problem(rel) is None and MTIME(mtime) for rel, mtime in value.items()
    )


TOP: dict[str, Field] = {
    "format": Field(_integer(1, FORMAT), f"1 to {FORMAT}"),
    "name": Field(_matching(SNAPSHOT), "a snapshot name (letters, digits, '._-')"),
    "created": TEXT,
    "home": TEXT,
    "bytes_copied": SIZE,
    "mac": Field(_matching(HEX64), "an HMAC-SHA256 (64 lowercase hex digits)"),
    "orthanc_log": Field(_orthanc_log, "the position in Orthanc's change log"),
    "folders": Field(_folders, "folders of the home (normalised paths) with their mtime"),
    "walked": Field(_iso_time, "a date and time (ISO 8601, with its offset)"),
    "frames_log": Field(_frames_log, "when the journal was asked, and the series in progress"),
    "parts": Field(valid_parts, "a list of part references per section"),
    "studies": Field(_studies, "the study folders below frames/ (names)"),
}
# "mac": none before signed snapshots; "orthanc_log", "folders", "walked": none before
# incremental snapshots; "frames_log": none before the journal said which series changed
OPTIONAL = ("created", "home", "bytes_copied", "mac", "orthanc_log", "folders", "walked",
            "frames_log", "parts", "studies")  # fmt: skip
ENTRY: dict[str, dict[str, Field]] = {
    "files": {
        "sha256": DIGEST,
        "size": SIZE,
        "mtime_ns": Field(_integer(-(1 << 63), (1 << 63) - 1), "a 64-bit time in ns"),
        "mode": Field(_integer(0, 0o777), "permission bits within 0o777", _octal),
    },
    "databases": {"sha256": DIGEST, "size": SIZE},
    "orthanc": {
        "uuid": Field(_matching(UUID), "an Orthanc attachment UUID"),
        "sha256": DIGEST,
        "size": SIZE,
    },
}


def parse(
    raw: bytes, name: str, key: bytes | None = None, read: Read | None = None,
    known: Known | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The manifest of snapshot ``name`` from its bytes; :class:`BackupError` if invalid.

    A manifest saved in parts is joined with ``read`` (:mod:`appliance.backup.parts`;
    refused without; the parts read go into ``known``). Given the backup ``key``, a
    signed manifest is also authenticated (:func:`authenticate`).
    """
    data = _json(raw, name)
    if isinstance(data, dict) and "parts" in data:
        if read is None:
            raise BackupError(f"snapshot {name} refused: a manifest in parts, where none can be")
        data = join(data, read, name, MAX_MANIFEST_BYTES, known)
    problem = _top_problem(data) or _sections_problem(data) or _conflict(data["files"])
    if problem:
        raise BackupError(f"snapshot {name} refused (its manifest is not valid): {problem}")
    if key is not None:
        authenticate(data, key, name)
    return data


def parse_top(raw: bytes, name: str) -> dict[str, Any] | None:
    """The manifest of snapshot ``name`` as saved in parts, none of its parts read: its
    own fields and databases validated (each part's entries are, as a part is read:
    :func:`entries_problem`); None if not saved in parts; :class:`BackupError` if invalid."""
    data = _json(raw, name)
    if not isinstance(data, dict) or "parts" not in data:
        return None
    unsplit = {s: {} for s in SECTIONS if s not in data}  # in the parts, unread
    problem = _top_problem(data | unsplit) or _sections_problem(data | unsplit)
    if problem:
        raise BackupError(f"snapshot {name} refused (its manifest is not valid): {problem}")
    return data


def _json(raw: bytes, name: str) -> Any:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BackupError(f"snapshot {name}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BackupError(f"snapshot {name}: manifest is not JSON ({exc})") from None


def backup_key(layout: HomeLayout, create: bool = False) -> bytes | None:
    """The home's backup key (made first if ``create``); None if the home has none."""
    path = layout.backup_key_file
    if create or path.is_file():
        return load_or_create_secret(path, 32).encode()
    return None


def sign(manifest: dict[str, Any], key: bytes) -> dict[str, Any]:
    """``manifest`` with its ``mac``: HMAC-SHA256 with the backup key over the rest (how
    format 1 snapshots were signed; the tests write such repositories with it)."""
    return {**manifest, "mac": _mac(manifest, key)}


def authenticate(manifest: dict[str, Any], key: bytes, name: str) -> None:
    """Refuse (:class:`BackupError`) a signed manifest that ``key`` did not sign as ``name``.

    An unsigned manifest (taken before snapshots were signed) passes: the caller decides
    what it accepts of those (:func:`signed`).
    """
    if not signed(manifest):
        return
    if not hmac.compare_digest(manifest["mac"], _mac(manifest, key)):
        raise BackupError(f"snapshot {name} refused: its manifest was changed, or it was signed "
                          "with another backup key than the one given.")  # fmt: skip
    if manifest["name"] != name:
        raise BackupError(f"snapshot {name} refused: it was signed as {manifest['name']!r}.")


def signed(manifest: dict[str, Any]) -> bool:
    """Whether the manifest carries a MAC (every snapshot since they are signed)."""
    return "mac" in manifest


def _mac(manifest: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in manifest.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _top_problem(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "the manifest is not a JSON object"
    unknown = set(data) - set(TOP) - set(SECTIONS)
    missing = set(TOP) - set(OPTIONAL) - set(data) | set(SECTIONS) - set(data)
    if unknown or missing:
        return f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
    for key, field in TOP.items():
        if key in data and not field.check(data[key]):
            return f"'{key}' is {_shown(data[key])}, not {field.must_be}"
    return next((f"'{s}' is not a JSON object" for s in SECTIONS
                 if not isinstance(data[s], dict)), None)  # fmt: skip


def _sections_problem(data: dict[str, Any]) -> str | None:
    return next(filter(None, (entries_problem(s, data[s]) for s in SECTIONS)), None)


def entries_problem(section: str, entries: dict[str, Any]) -> str | None:
    """What makes these entries of ``section`` (``folders`` too) invalid; None if nothing."""
    if section == "folders":
        return None if _folders(entries) else f"folders must be {TOP['folders'].must_be}"
    for key, entry in entries.items():
        problem = _key_problem(section, key) or _entry_problem(section, entry)
        if problem:
            return f"{section} entry {_shown(key)}: {problem}"
    return None


def _key_problem(section: str, key: str) -> str | None:
    if section == "files":
        return path_problem(key)
    if section == "databases":
        return None if key in DATABASES else f"not one of {', '.join(DATABASES)}"
    return None if ORTHANC_ID.fullmatch(key) else "not an Orthanc instance ID"


def _entry_problem(section: str, entry: Any) -> str | None:
    fields = ENTRY[section]
    if not isinstance(entry, dict) or set(entry) != set(fields):
        return f"must be an object with exactly the keys {', '.join(fields)}"
    for key, field in fields.items():
        if not field.check(entry[key]):
            return f"'{key}' is {field.show(entry[key])}, not {field.must_be}"
    return None


def path_problem(rel: str) -> str | None:
    """What makes ``rel`` unfit as a path inside a new home; None if it is fit."""
    if "\0" in rel or len(rel.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        return f"a path must hold no NUL and at most {MAX_PATH_BYTES} bytes"
    if rel.startswith("/"):
        return "an absolute path; only paths inside the home are restored"
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a path with an empty, '.' or '..' component; only normalised paths inside the home"
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in parts):
        return f"a path component longer than {MAX_NAME_BYTES} bytes"
    if parts[0] in SKIPPED:
        return f"inside {parts[0]}/, which a backup never holds as files"
    return "the backup key, which no backup holds" if rel == KEY_FILE else None


def _conflict(files: dict[str, Any]) -> str | None:
    """A path that would be both a file and a folder of the restored home."""
    folders = home_folders()
    for rel in files:
        end = rel.find("/")
        while end != -1:
            folders.add(rel[:end])
            end = rel.find("/", end + 1)
    clash = next((rel for rel in files if rel in folders), None)
    if clash is None:
        return None
    return f"files entry {_shown(clash)}: would be both a file and a folder of the home"


def home_folders() -> set[str]:
    """The folders a new home has (``make_home_dirs``), relative to it."""
    layout = HomeLayout(Path("."))
    made = [*layout.entry_dirs(), *layout.private_dirs(), *layout.shared_dirs()]
    return {path.as_posix() for path in made if path != Path(".")}
