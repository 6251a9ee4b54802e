"""Robustness: a bounded, seeded fuzz run against the real appliance, on loopback only.

What goes in:

* Part 10 objects: pydicom's test files (the folder itself, not
  ``get_testdata_files('*')``, which tries the network, design.md fact 8) and a synthetic
  CT slice, each under a fresh SOP Instance UID, then mutated: byte flips, truncation, a
  corrupted length field, a duplicated element, a deflated data set (valid, corrupt,
  truncated, or a bomb that inflates to :data:`BOMB_BYTES`). They are sent by C-STORE
  with pynetdicom (one presentation context per SOP class and transfer syntax, the data
  set as it is, design.md fact 14) or by STOW-RS through nginx with a technologist's
  token, some STOW bodies also broken at the multipart level.
* Requests: valid gateway URLs (QIDO, WADO, frames, the app's API) mutated in path,
  query, method and credentials, written raw to nginx; raw request heads written
  straight to the frame gate.

What is checked:

* every HTTP answer arrives and is below 500;
* every acknowledged object (C-STORE Success, or listed in a STOW answer's
  ReferencedSOPSequence) ends ``stored`` in the journal and in Orthanc, or ``failed`` with
  a reason that ``neuronova ingest status --json`` lists; any other end counts as lost;
* no supervised process restarted (pids and states in ``run/supervisor.json``).

Bounded by count and time; the same seed gives the same inputs::

    python bench/fuzz.py                          # at most 10 minutes; robustness.md
    python bench/fuzz.py --max-seconds 60 --max-inputs 300 --out /tmp/robustness.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import random
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom import _config as pynetdicom_config

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.config import Settings
from appliance.layout import HomeLayout
from appliance.orthanc import orthanc_auth_header, orthanc_url
from appliance.receiver import TRANSFER_SYNTAXES
from appliance.runner import settings_environment
from bench.harness import LOOPBACK, REPO, Appliance, http, python_env, running
from bench.synthetic import ct_file_dataset, make_slices

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
FUZZ_USER, FUZZ_AE = "fuzz.tech", "FUZZSCU"
BOMB_BYTES = 512 * 1024**2  # what a deflate bomb inflates to
BOMB_EVERY = 250  # objects 5, 255, 505, ... are deflate bombs
ASSOCIATION_BATCH = 16
ANSWER_TIMEOUT = 20.0
EXAMPLES = 12  # findings listed per kind in the report
STORAGE_CLASSES = frozenset(c.abstract_syntax for c in StoragePresentationContexts)
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
DICOMWEB = "/api/pacs/dicom-web"
SUCCESS_STATUSES = frozenset({0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})


# --------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """At most ``max_inputs`` inputs and ``max_seconds`` of wall time for the whole run."""

    max_inputs: int
    max_seconds: float
    start: float = field(default_factory=time.monotonic)

    def deadline(self, share: float) -> float:
        """The monotonic time by which the first ``share`` of the time is spent."""
        return self.start + share * self.max_seconds

    def count(self, share: float) -> int:
        """``share`` of the inputs (at least one)."""
        return max(1, int(share * self.max_inputs))


# --------------------------------------------------------------------------- findings


@dataclass
class Figures:
    """What the run tried and found."""

    seed: int
    inputs: Counter = field(default_factory=Counter)  # per kind of input
    answers: Counter = field(default_factory=Counter)  # "channel answer" -> count
    findings: dict[str, list[str]] = field(default_factory=dict)  # kind -> examples
    finding_counts: Counter = field(default_factory=Counter)
    objects: Counter = field(default_factory=Counter)  # acknowledged, stored, failed, lost
    restarts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def answer(self, channel: str, what: str) -> None:
        self.answers[f"{channel} {what}"] += 1

    def finding(self, kind: str, example: str) -> None:
        """Count one problem of ``kind``; keep the first few distinct examples."""
        self.finding_counts[kind] += 1
        examples = self.findings.setdefault(kind, [])
        if len(examples) < EXAMPLES and example[:300] not in examples:
            examples.append(example[:300])

    @property
    def server_errors(self) -> int:
        return self.finding_counts["5xx"]

    @property
    def lost(self) -> int:
        return self.objects["lost"]


# --------------------------------------------------------------------------- corpus


@dataclass
class Seed:
    """One corpus object: its name and parsed data set (UIDs replaced per input)."""

    name: str
    dataset: Dataset

    @property
    def sop_class(self) -> str:
        return str(self.dataset.file_meta.MediaStorageSOPClassUID)

    @property
    def syntax(self) -> UID:
        return self.dataset.file_meta.TransferSyntaxUID

    def part10(self, sop_uid: str) -> bytes:
        """The seed as a Part 10 file under ``sop_uid``."""
        self.dataset.SOPInstanceUID = sop_uid
        self.dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, self.dataset, enforce_file_format=True)
        return buffer.getvalue()


def corpus() -> list[Seed]:
    """pydicom's test files that are whole Part 10 objects, and a synthetic CT slice."""
    seeds = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        with contextlib.suppress(Exception):  # a test file of pydicom's that is not usable
            ds = pydicom.dcmread(path)
            if "SOPClassUID" in ds and "TransferSyntaxUID" in ds.file_meta:
                seed = Seed(path.name, ds)
                seed.part10("1.2.3")  # it can be written back
                seeds.append(seed)
    pixels = make_slices(1)[0][::4, ::4]  # 128x128 keeps each input small
    synthetic = ct_file_dataset(pixels, 0, "2.25.1", "2.25.2", "2.25.3")
    seeds.append(Seed("synthetic CT slice", synthetic))
    return seeds


def file_meta(sop_class: str, sop_uid: str, syntax: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information for a data set in ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + file meta, data set) of a Part 10 file that has a group length."""
    end = 144 + struct.unpack_from("<I", data, 140)[0]
    return data[:end], data[end:]


# --------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Mutant:
    """A mutated object: its Part 10 bytes and what was done to it."""

    data: bytes
    label: str
    sop_class: str
    syntax: str


def _elements(body: bytes, syntax: UID) -> list[tuple[int, int, int, int]]:
    """(start, length-field offset, length-field size, end) of each top-level element."""
    found: list[tuple[int, int, int]] = []
    stream = io.BytesIO(body)
    for elem in data_element_generator(
        stream, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=256
    ):
        long_field = syntax.is_implicit_VR or elem.VR in LONG_VRS
        header = 8 if syntax.is_implicit_VR or elem.VR not in LONG_VRS else 12
        found.append((elem.value_tell - header, elem.value_tell - (4 if long_field else 2),
                      4 if long_field else 2))  # fmt: skip
    ends = [start for start, _, _ in found[1:]] + [len(body)]
    return [(s, off, size, end) for (s, off, size), end in zip(found, ends, strict=True)]


def flip(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """XOR 1-8 bytes, most of them in the first 2 KB (where the header elements are)."""
    data = bytearray(body)
    count = rng.randint(1, 8)
    for _ in range(count):
        span = min(len(data), 2048) if rng.random() < 0.7 else len(data)
        data[rng.randrange(span)] ^= rng.randint(1, 255)
    return bytes(data), f"flip x{count}"


def truncate(rng: random.Random, body: bytes) -> tuple[bytes, str]:
    """Cut the data set short."""
    cut = rng.randrange(len(body))
    return body[:cut], f"truncate at {cut}/{len(body)}"


def corrupt_length(rng: random.Random, body: bytes, syntax: UID) -> tuple[bytes, str]:
    """Rewrite one element's length field: undefined, huge, off by one, odd or zero."""
    start, offset, size, end = rng.choice(_elements(body, syntax))
    old = end - start
    choices = [0, 1, old + 1, old - 1, len(body) * 2, 0xFFFF, 0x7FFFFFF0, 0xFFFFFFFF]
    value = rng.choice(choices) & (0xFFFF if size == 2 else 0xFFFFFFFF)
    order = "<" if syntax.is_little_endian else ">"
    packed = struct.pack(order + ("H" if size == 2 else "I"), value)
    data = body[:offset] + packed + body[offset + size :]
    return data, f"length of element at {start} := {value:#x}"


def duplicate(rng: random.Random, body: bytes, syntax: UID) -> tuple[bytes, str]:
    """Repeat one element: right after itself, or at the start (out of order)."""
    start, _, _, end = rng.choice(_elements(body, syntax))
    element = body[start:end]
    if rng.random() < 0.5:
        return body[:end] + element + body[end:], f"duplicate element at {start}"
    return element + body, f"element at {start} copied to the front"


def deflate(rng: random.Random, body: bytes, bomb: bool) -> tuple[bytes, str]:
    """The data set deflated: as it is, corrupt, truncated, or padded into a bomb."""
    if bomb:
        padding = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, BOMB_BYTES)
        compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
        chunk = bytes(16 * 1024**2)
        parts = [compressor.compress(body + padding)]
        parts += [compressor.compress(chunk) for _ in range(BOMB_BYTES // len(chunk))]
        return b"".join(parts) + compressor.flush(), f"deflate bomb ({BOMB_BYTES >> 20} MiB)"
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(body) + compressor.flush()
    how = rng.choice(["as is", "corrupt", "truncated"])
    if how == "corrupt":
        data = flip(rng, data)[0]
    elif how == "truncated":
        data = data[: rng.randrange(1, len(data))]
    return data, f"deflate ({how})"


def mutate(rng: random.Random, seed: Seed, sop_uid: str, bomb: bool) -> Mutant:
    """``seed`` under ``sop_uid`` with one or two mutations of its data set."""
    meta, body = split_part10(seed.part10(sop_uid))
    syntax, labels = seed.syntax, []
    if bomb or (rng.random() < 0.12 and not syntax.is_deflated):
        body, label = deflate(rng, body, bomb)
        meta = file_meta(seed.sop_class, sop_uid, DeflatedExplicitVRLittleEndian)
        return Mutant(meta + body, label, seed.sop_class, DeflatedExplicitVRLittleEndian)
    for _ in range(rng.choice([1, 1, 1, 2])):
        body, label = _structural(rng, body, syntax)
        labels.append(label)
    return Mutant(meta + body, "; ".join(labels), seed.sop_class, str(syntax))


def _structural(rng: random.Random, body: bytes, syntax: UID) -> tuple[bytes, str]:
    """One of flip, truncate, corrupt_length, duplicate (the last two need a parsable body)."""
    kind = rng.choice(["flip", "flip", "truncate", "length", "length", "duplicate"])
    if kind == "truncate" and body:
        return truncate(rng, body)
    if kind in ("length", "duplicate") and not syntax.is_deflated:
        try:
            mutator = corrupt_length if kind == "length" else duplicate
            return mutator(rng, body, syntax)
        except Exception:  # already unparsable: fall back to a flip
            pass
    return flip(rng, body) if body else (body, "empty")


def uid_for(rng: random.Random) -> str:
    """A deterministic, unique-enough UID under the 2.25 (UUID-derived) root."""
    return f"2.25.{rng.getrandbits(120)}"


def journal_keys(mutant: Mutant, sent_uid: str) -> set[str]:
    """The SOP Instance UIDs the appliance may journal the object under.

    The UID it was sent under, and the one its (mutated) data set now holds.
    """
    keys = {sent_uid}
    with contextlib.suppress(Exception):
        ds = pydicom.dcmread(io.BytesIO(mutant.data), stop_before_pixels=True,
                             specific_tags=["SOPInstanceUID"])  # fmt: skip
        keys.add(str(ds.SOPInstanceUID))
    return keys


# --------------------------------------------------------------------------- DICOM


@dataclass
class Sent:
    """An object the appliance acknowledged, and where to look for it."""

    channel: str
    label: str
    keys: set[str]


@contextlib.contextmanager
def raw_datasets() -> Iterator[None]:
    """Have pynetdicom send a file's data set bytes as they are (no decode, no re-encode)."""
    before = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = before


def cstore_batch(
    settings: Settings, batch: list[tuple[Mutant, str]], folder: Path, figures: Figures
) -> list[Sent]:
    """Send ``batch`` in one association (re-associating after an abort)."""
    acknowledged: list[Sent] = []
    pending = list(batch)
    while pending:
        ae = AE(ae_title=FUZZ_AE)
        for syntax_pair in sorted({(m.sop_class, m.syntax) for m, _ in pending}):
            ae.add_requested_context(*syntax_pair)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ANSWER_TIMEOUT
        assoc = ae.associate(LOOPBACK, settings.dicom_port, ae_title=settings.ae_title)
        if not assoc.is_established:
            figures.finding("association refused", f"{len(pending)} objects not sent")
            return acknowledged
        while pending and assoc.is_established:
            mutant, sop_uid = pending.pop(0)
            sent = _cstore_one(assoc, mutant, sop_uid, folder, figures)
            if sent is not None:
                acknowledged.append(sent)
        if assoc.is_established:
            assoc.release()
    return acknowledged


def _cstore_one(assoc, mutant: Mutant, sop_uid: str, folder: Path, figures: Figures) -> Sent | None:
    path = folder / "object.dcm"
    path.write_bytes(mutant.data)
    try:
        status = assoc.send_c_store(path)
    except Exception as exc:  # the SCU could not even send it
        figures.answer("c-store", f"not sent ({exc.__class__.__name__})")
        return None
    if "Status" not in status:
        figures.answer("c-store", "no answer")
        figures.finding("C-STORE without an answer", mutant.label)
        return None
    code = int(status.Status)
    figures.answer("c-store", f"{code:#06x}")
    if code == 0xC211:  # pynetdicom's answer when a handler raised
        figures.finding("C-STORE 0xC211 (unhandled error)", mutant.label)
    if code in SUCCESS_STATUSES:
        return Sent("c-store", mutant.label, journal_keys(mutant, sop_uid))
    if not str(status.get("ErrorComment", "")).strip():
        figures.finding("C-STORE refusal without ErrorComment", f"{code:#06x} {mutant.label}")
    return None


def multipart(parts: list[bytes], boundary: str) -> bytes:
    """A ``multipart/related`` body of ``application/dicom`` parts."""
    chunks = [
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (boundary.encode(), p)
        for p in parts
    ]
    return b"".join(chunks) + b"--%s--\r\n" % boundary.encode()


def stow_type(boundary: str) -> str:
    """The Content-Type of a STOW-RS request."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(
    settings: Settings, token: str, items: list[tuple[Mutant, str]], rng: random.Random,
    figures: Figures,
) -> list[Sent]:  # fmt: skip
    """POST ``items`` in one STOW-RS request through nginx, maybe broken at the HTTP level."""
    boundary = f"fuzz{rng.getrandbits(48):x}"
    body = multipart([m.data for m, _ in items], boundary)
    kind = stow_type(boundary)
    broken = rng.choice([None] * 6 + ["no closing", "wrong boundary", "not multipart", "empty"])
    if broken == "no closing":
        body = body[: -len(boundary) - 6]
    elif broken == "wrong boundary":
        kind = kind.replace(boundary, boundary + "x")
    elif broken == "not multipart":
        kind = "application/dicom"
    elif broken == "empty":
        body = b""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": kind}
    url = f"http://{LOOPBACK}:{settings.http_port}{DICOMWEB}/studies"
    labels = " | ".join(m.label for m, _ in items) + (f" [{broken}]" if broken else "")
    try:
        status, _, answer = http(url, body, headers, timeout=120)
    except OSError as exc:
        figures.finding("STOW without an answer", f"{exc!r}: {labels}")
        return []
    figures.answer("stow", str(status))
    if status >= 500:
        figures.finding("5xx", f"STOW {status} {answer[:120]!r}: {labels}")
    if broken and status < 400:
        figures.finding("broken STOW body accepted", f"{status}: {labels}")
    return _stow_acknowledged(status, answer, items)


def _stow_acknowledged(status: int, answer: bytes, items: list[tuple[Mutant, str]]) -> list[Sent]:
    if status not in (200, 202):
        return []
    try:
        referenced = json.loads(answer).get("00081199", {}).get("Value", [])
    except ValueError:
        return []
    acknowledged = {str(r["00081155"]["Value"][0]) for r in referenced}
    sent = []
    for mutant, sop_uid in items:
        keys = journal_keys(mutant, sop_uid)
        if keys & acknowledged:
            sent.append(Sent("stow", mutant.label, keys & acknowledged))
    return sent


def send_objects(
    settings: Settings, token: str, budget: Budget, seed: int, figures: Figures
) -> list[Sent]:
    """The DICOM phase: mutated corpus objects by C-STORE and STOW-RS."""
    rng, seeds = random.Random(seed), corpus()
    deadline, count = budget.deadline(0.45), budget.count(0.5)
    acknowledged: list[Sent] = []
    with tempfile.TemporaryDirectory(prefix="nn-fuzz-") as tmp, raw_datasets():
        made = 0
        while made < count and time.monotonic() < deadline:
            batch = [_next_mutant(rng, seeds, made + i) for i in range(ASSOCIATION_BATCH)]
            made += len(batch)
            by_cstore = [b for b in batch if _cstore_can_send(b[0]) and rng.random() < 0.6]
            by_stow = [b for b in batch if b not in by_cstore]
            figures.inputs["objects by C-STORE"] += len(by_cstore)
            figures.inputs["objects by STOW-RS"] += len(by_stow)
            acknowledged += cstore_batch(settings, by_cstore, Path(tmp), figures)
            for start in range(0, len(by_stow), 3):
                acknowledged += stow(settings, token, by_stow[start : start + 3], rng, figures)
    figures.objects["acknowledged"] = len(acknowledged)
    return acknowledged


def _next_mutant(rng: random.Random, seeds: list[Seed], index: int) -> tuple[Mutant, str]:
    sop_uid = uid_for(rng)
    bomb = index % BOMB_EVERY == 5
    return mutate(rng, rng.choice(seeds), sop_uid, bomb), sop_uid


def _cstore_can_send(mutant: Mutant) -> bool:
    """Whether the receiver offers a presentation context for it at all."""
    return mutant.sop_class in STORAGE_CLASSES and mutant.syntax in TRANSFER_SYNTAXES


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Answer:
    """A raw HTTP answer: status (None if none came), headers (lower-case), body."""

    status: int | None
    headers: dict[str, str]
    body: bytes


def raw_http(port: int, request: bytes, half_close: bool = False) -> Answer:
    """Write ``request`` as it is to 127.0.0.1:``port``; read the answer until close.

    ``half_close`` ends the sending side at once, so that a server waiting for more of
    a request sees its end instead of waiting for it.
    """
    chunks = []
    with socket.create_connection((LOOPBACK, port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return Answer(None, {}, data)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(parts[1]), headers, body)


@dataclass(frozen=True)
class Known:
    """UIDs of one stored object, to build valid URLs from."""

    study: str
    series: str
    instance: str


def seed_urls(known: Known) -> list[str]:
    """Valid requests of every shape the gateway knows."""
    s = f"{DICOMWEB}/studies/{known.study}"
    se = f"{s}/series/{known.series}"
    i = f"{se}/instances/{known.instance}"
    return [
        f"{DICOMWEB}/studies?PatientID=NNBENCH0001&limit=10&offset=0&includefield=all",
        f"{DICOMWEB}/studies?StudyDate=20200101-20301231&fuzzymatching=true",
        f"{DICOMWEB}/series?Modality=CT&00100010=BENCH*",
        f"{DICOMWEB}/instances?SOPInstanceUID={known.instance}",
        s, f"{s}/metadata", f"{s}/series", f"{s}/instances", f"{s}/rendered",
        se, f"{se}/metadata", f"{se}/instances", f"{se}/thumbnail",
        i, f"{i}/metadata", f"{i}/frames/1", f"{i}/frames/1,1", f"{i}/rendered",
        f"{i}/thumbnail", f"{i}/bulk/7FE00010", f"{i}/frames/1/rendered",
        "/api/studies?limit=20&offset=0&q=BENCH&sort=-date",
        f"/api/studies/{known.study}/series",
        "/api/auth/me", "/api/auth/check", "/api/shares", "/api/shares/open?token=abc",
        "/api/admin/users", "/api/admin/audit?limit=5", "/api/admin/system",
        "/api/health", "/api/health/live", "/", "/index.html", "/assets/missing.js",
        "/pacs-viewer/", "/internal-frames/x", "/internal-orthanc/system",
    ]  # fmt: skip


TOKENS = ["/", "//", "..", "../", "%2e%2e%2f", "%00", "%", "%zz", "%2F", ";", "?", "&", "=",
          "#", "*", "~", "\\", "'", '"', "<", ">", " ", "\t", "\x00", "\x7f", "\xff",
          "é", "\u202e", "1", "0", "-1", ".", "1.2", "01", "9" * 70, "a" * 300,
          "1." * 40, "A." * 40 + "!", "frames", "studies", "series", "instances",
          "%252e", "+", "[", "]", "{", "}", "|", "^", "`", "$", "@", ":"]  # fmt: skip
QUERY_KEYS = ["limit", "offset", "includefield", "fuzzymatching", "PatientID", "StudyDate",
              "00100010", "00100010.00100020", "q", "sort", "token", "since", "event",
              "A" * 70, "0" * 9, "a." * 30 + "!", "", "=", "%00"]  # fmt: skip
QUERY_VALUES = ["", "0", "-1", "1e99", "999999999999999999999", "nan", "true", "all",
                "*", "?*", "\\", "%", "%00", "a" * 2000, "1" * 70, "19990101-", "'; --",
                "A." * 500 + "!", "é"]  # fmt: skip
GATE_EXTRAS = ["", "", "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
               "Content-Length: 5\r\n\r\nhello", "Upgrade: websocket\r\nConnection: upgrade\r\n",
               "X-Long: " + "a" * 40000 + "\r\n", "Accept: " + "x," * 3000 + "\r\n",
               "Bad Header\r\n", "Accept: a\r\nAccept: b\r\n"]  # fmt: skip
METHODS = ["GET"] * 8 + ["HEAD", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]
WRITE_PATHS = ("/api/admin", "/api/auth/logout", "/api/shares", "/api/auth/refresh")


def mutate_url(rng: random.Random, url: str) -> tuple[str, str]:
    """``url`` with 1-3 edits: inserted, replaced or deleted tokens, query parameters."""
    labels = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["insert", "replace", "delete", "query", "query", "segment"])
        url = _URL_EDITS[kind](rng, url)
        labels.append(kind)
    return url, "+".join(labels)


def _insert(rng: random.Random, url: str) -> str:
    at = rng.randrange(len(url) + 1)
    return url[:at] + rng.choice(TOKENS) + url[at:]


def _replace(rng: random.Random, url: str) -> str:
    at = rng.randrange(len(url))
    return url[:at] + rng.choice(TOKENS) + url[at + rng.randint(1, 8) :]


def _delete(rng: random.Random, url: str) -> str:
    at = rng.randrange(len(url))
    return url[:at] + url[at + rng.randint(1, 12) :]


def _query(rng: random.Random, url: str) -> str:
    pair = f"{rng.choice(QUERY_KEYS)}={rng.choice(QUERY_VALUES)}"
    return url + ("&" if "?" in url else "?") + pair


def _segment(rng: random.Random, url: str) -> str:
    path, sep, query = url.partition("?")
    parts = path.split("/")
    parts[rng.randrange(1, len(parts))] = rng.choice(TOKENS)
    return "/".join(parts) + sep + query


_URL_EDITS: dict[str, Callable[[random.Random, str], str]] = {
    "insert": _insert, "replace": _replace, "delete": _delete, "query": _query,
    "segment": _segment,
}  # fmt: skip


def credentials(rng: random.Random, token: str) -> tuple[str, str]:
    """A header line carrying credentials (or none), and its label."""
    choice = rng.choice(["bearer"] * 5 + ["none", "garbage", "cookie", "two", "bad cookie"])
    lines = {
        "bearer": f"Authorization: Bearer {token}\r\n",
        "none": "",
        "garbage": f"Authorization: Bearer {token[:-4]}AAAA\r\n",
        "cookie": f"Cookie: nn_session={token}\r\n",
        "two": f"Authorization: Bearer {token}\r\nAuthorization: Bearer x\r\n",
        "bad cookie": "Cookie: nn_session=; nn_session=x\r\n",
    }
    return lines[choice], choice


def gateway_request(rng: random.Random, urls: list[str], token: str) -> tuple[bytes, str]:
    """One raw request for nginx: a mutated URL, a method, credentials."""
    url, label = mutate_url(rng, rng.choice(urls))
    method = rng.choice(METHODS)
    if method not in ("GET", "HEAD") and url.startswith(WRITE_PATHS):
        method = "GET"  # keep the fuzz user's session and the users intact
    auth, who = credentials(rng, token)
    head = (f"{method} {url} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{auth}"
            "Accept: */*\r\nConnection: close\r\n")  # fmt: skip
    if method in ("POST", "PUT", "PATCH"):
        head += "Content-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
    else:
        head += "\r\n"
    return head.encode("utf-8", "surrogateescape"), f"{method} {url!r} ({label}, {who})"


def fuzz_gateway(
    settings: Settings, token: str, known: Known, budget: Budget, seed: int, figures: Figures
) -> None:
    """Mutated paths and queries through nginx: every answer must come and be below 500."""
    rng, urls = random.Random(seed + 1), seed_urls(known)
    deadline, count = budget.deadline(0.75), budget.count(0.35)
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        request, label = gateway_request(rng, urls, token)
        figures.inputs["requests through nginx"] += 1
        _check(raw_http(settings.http_port, request), "nginx", label, figures)


def _check(answer: Answer, channel: str, label: str, figures: Figures) -> None:
    if answer.status is None:
        figures.answer(channel, "no answer")
        figures.finding(f"{channel}: no HTTP answer", f"{label} -> {answer.body[:80]!r}")
        return
    figures.answer(channel, f"{answer.status // 100}xx")
    if answer.status >= 500:
        figures.finding("5xx", f"{channel} {answer.status}: {label} -> {answer.body[:120]!r}")


def gate_request(rng: random.Random, frame_url: str, token: str) -> tuple[bytes, str, bool]:
    """A raw request head for the frame gate, as nginx would never send it.

    Returns (request, label, whether it carries a valid token at all).
    """
    url, label = mutate_url(rng, frame_url) if rng.random() < 0.7 else (frame_url, "as is")
    auth, who = credentials(rng, token)
    extra = rng.choice(GATE_EXTRAS)
    version = rng.choice(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/9", "JUNK"])
    method = rng.choice(["GET"] * 6 + ["HEAD", "POST", "G\x00T", "CONNECT"])
    head = f"{method} {url} {version}\r\nHost: x\r\n{auth}Connection: close\r\n{extra}"
    if not extra.endswith(("\r\n\r\n", "hello")):
        head += "\r\n"
    request = head.encode("utf-8", "surrogateescape")
    valid = who not in ("none", "garbage", "bad cookie")
    return request, f"{method} {url!r} {version} ({label}, {who}, {extra[:24]!r})", valid


def fuzz_frame_gate(
    settings: Settings, token: str, known: Known, budget: Budget, seed: int, figures: Figures
) -> None:
    """Raw request heads straight to the frame gate: never 5xx, never a frame without a token."""
    rng = random.Random(seed + 2)
    frame_url = (f"{DICOMWEB}/studies/{known.study}/series/{known.series}"
                 f"/instances/{known.instance}/frames/1")  # fmt: skip
    deadline, count = budget.deadline(0.85), budget.count(0.15)
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        request, label, authorized = gate_request(rng, frame_url, token)
        figures.inputs["raw requests to the frame gate"] += 1
        try:
            answer = raw_http(settings.gate_port, request, half_close=True)
        except OSError as exc:
            figures.finding("frame gate: connection refused", f"{exc!r}: {label}")
            continue
        if answer.status is None and not answer.body:
            figures.answer("frame gate", "closed without answer")
            continue
        _check(answer, "frame gate", label, figures)
        redirect = answer.headers.get("x-accel-redirect", "")
        if redirect.startswith("/internal-frames/") and not authorized:
            figures.finding("frame gate granted a frame without a token", label)


# --------------------------------------------------------------------------- outcome


def journal(settings: Settings) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (state, error) for every journal row (read-only)."""
    uri = f"file:{HomeLayout(settings.home).database_file}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        rows = db.execute("SELECT sop_uid, state, coalesce(error, '') FROM instances")
        return {sop: (state, error) for sop, state, error in rows}


def in_orthanc(settings: Settings, sop_uid: str) -> bool:
    """Whether Orthanc holds an instance with this SOP Instance UID."""
    request = urllib.request.Request(
        orthanc_url(settings) + "/tools/lookup", data=sop_uid.encode(), method="POST",
        headers={"Authorization": orthanc_auth_header(settings), "Content-Type": "text/plain"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as resp:
        return any(item.get("Type") == "Instance" for item in json.loads(resp.read()))


def ingest_status(settings: Settings) -> dict[str, Any]:
    """``neuronova ingest status --json``: what an operator sees."""
    command = [sys.executable, "-m", "appliance", "ingest", "status", "--json",
               "--home", str(settings.home)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=appliance_env(settings), check=True)  # fmt: skip
    return json.loads(done.stdout)


def appliance_env(settings: Settings) -> dict[str, str]:
    """The environment of a ``python -m appliance`` command on this home."""
    return {**python_env(), **settings_environment(settings)}


def settle(settings: Settings, sent: list[Sent], deadline: float) -> dict[str, tuple[str, str]]:
    """Wait (until ``deadline``) for every acknowledged object to be stored or failed."""
    while True:
        rows = journal(settings)
        states = [_state(rows, s.keys)[0] for s in sent]
        if all(s in ("stored", "failed") for s in states) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def _state(rows: dict[str, tuple[str, str]], keys: set[str]) -> tuple[str, str, str]:
    """(state, error, key) of the first of ``keys`` the journal has; state 'missing' if none."""
    for key in sorted(keys):
        if key in rows:
            return (*rows[key], key)
    return "missing", "", ""


def account(settings: Settings, sent: list[Sent], deadline: float, figures: Figures) -> None:
    """Count each acknowledged object as stored, failed (visibly) or lost."""
    rows = settle(settings, sent, deadline)
    shown = {row["sop_uid"]: row["error"] for row in ingest_status(settings)["failed"]}
    for item in sent:
        state, error, key = _state(rows, item.keys)
        if state == "stored" and in_orthanc(settings, key):
            figures.objects["stored"] += 1
        elif state == "failed" and error and shown.get(key):
            figures.objects["failed, reason shown"] += 1
        else:
            figures.objects["lost"] += 1
            why = "stored in the journal, not in Orthanc" if state == "stored" else state
            figures.finding("acknowledged object lost", f"{item.channel} {item.label}: {why}")


def supervisor_children(settings: Settings) -> dict[str, tuple[int, str]]:
    """Child name -> (pid, state) from ``run/supervisor.json``."""
    state = json.loads(HomeLayout(settings.home).state_file.read_text())
    return {name: (c["pid"], c["state"]) for name, c in state["children"].items()}


def log_sizes(settings: Settings) -> dict[Path, int]:
    """Each appliance log file and its size now."""
    return {path: path.stat().st_size for path in HomeLayout(settings.home).log_dir.glob("*.log")}


def new_tracebacks(settings: Settings, since: dict[Path, int]) -> list[str]:
    """'log: exception line' of each traceback logged after ``since`` (see :func:`log_sizes`)."""
    found = []
    for path in sorted(HomeLayout(settings.home).log_dir.glob("*.log")):
        with path.open("rb") as log:
            log.seek(since.get(path, 0))
            lines = log.read().decode(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                last = next((ln for ln in lines[index + 1 :] if not ln.startswith(" ")), "?")
                found.append(f"{path.name}: {last}")
    return found


# --------------------------------------------------------------------------- the run


def store_known(settings: Settings, token: str) -> Known:
    """Store one unmutated object by STOW-RS and wait for it, for valid URLs to mutate."""
    seed = corpus()[-1]
    sop_uid = uid_for(random.Random(0))
    boundary = "fuzzknown"
    url = f"http://{LOOPBACK}:{settings.http_port}{DICOMWEB}/studies"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": stow_type(boundary)}
    status, _, answer = http(url, multipart([seed.part10(sop_uid)], boundary), headers, 60)
    if status != 200:
        raise RuntimeError(f"STOW of the known object failed: HTTP {status} {answer[:300]!r}")
    deadline = time.monotonic() + 120
    while journal(settings).get(sop_uid, ("",))[0] != "stored":
        if time.monotonic() > deadline:
            raise RuntimeError("the known object was not stored within 120 s")
        time.sleep(0.2)
    ds = seed.dataset
    return Known(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sop_uid)


def fuzz(settings: Settings, token: str, budget: Budget, seed: int = 7) -> Figures:
    """The whole run against a started appliance; ``token`` may STOW (technologist)."""
    figures = Figures(seed)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="pydicom")  # mutated objects warn by design
    before, logs = supervisor_children(settings), log_sizes(settings)
    known = store_known(settings, token)
    sent = send_objects(settings, token, budget, seed, figures)
    fuzz_gateway(settings, token, known, budget, seed, figures)
    fuzz_frame_gate(settings, token, known, budget, seed, figures)
    account(settings, sent, budget.deadline(1.0), figures)
    after = supervisor_children(settings)
    figures.restarts = [f"{name}: {before[name]} -> {after.get(name)}"
                        for name in before if after.get(name) != before[name]]  # fmt: skip
    for line in new_tracebacks(settings, logs):
        figures.finding("traceback in the logs", line)
    figures.seconds = round(time.monotonic() - budget.start, 1)
    return figures


def technologist_token(settings: Settings, password: str) -> str:
    """Add the fuzz user (technologist: may STOW) and log in through nginx."""
    command = [sys.executable, "-m", "appliance", "user", "add", FUZZ_USER, "--role",
               "technologist", "--password-stdin", "--home", str(settings.home)]  # fmt: skip
    subprocess.run(command, input=password + "\n", capture_output=True, text=True,
                   env=appliance_env(settings), timeout=60, check=True)  # fmt: skip
    body = json.dumps({"username": FUZZ_USER, "password": password}).encode()
    url = f"http://{LOOPBACK}:{settings.http_port}/api/auth/login"
    status, _, answer = http(url, body, {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"login failed: HTTP {status} {answer[:200]!r}")
    return json.loads(answer)["access_token"]


# --------------------------------------------------------------------------- report


def commit() -> str:
    """The checked-out commit (and whether the tree had changes)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "-uno").strip() else ""
    return git("rev-parse", "--short", "HEAD").strip() + dirty


def report(figures: Figures, budget: Budget, revision: str) -> str:
    """robustness.md."""
    inputs = sum(figures.inputs.values())
    lines = [
        "# Robustness: a bounded fuzz run against the real appliance",
        "",
        f"Commit {revision}; seed {figures.seed}; bounds {budget.max_inputs} inputs and "
        f"{budget.max_seconds:.0f} s; ran {figures.seconds:.0f} s. Command: "
        f"`python bench/fuzz.py --seed {figures.seed} --max-inputs {budget.max_inputs} "
        f"--max-seconds {budget.max_seconds:.0f}` (see its docstring for what is sent).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| inputs tried | {inputs} |",
        *[f"| - {kind} | {n} |" for kind, n in sorted(figures.inputs.items())],
        f"| HTTP answers 5xx | {figures.server_errors} |",
        f"| crashes (supervised processes restarted) | {len(figures.restarts)} |",
        f"| objects acknowledged | {figures.objects['acknowledged']} |",
        f"| - stored (journal and Orthanc) | {figures.objects['stored']} |",
        f"| - failed, reason shown by `neuronova ingest status` | "
        f"{figures.objects['failed, reason shown']} |",
        f"| objects acknowledged but lost | {figures.lost} |",
        f"| tracebacks in the appliance's logs | "
        f"{figures.finding_counts['traceback in the logs']} |",
        "",
        "## Answers",
        "",
        "| channel and answer | count |",
        "|---|---|",
        *[f"| {what} | {n} |" for what, n in sorted(figures.answers.items())],
        "",
        "## Findings",
        "",
    ]
    if figures.restarts:
        lines += [f"- restarted: {r}" for r in figures.restarts]
    for kind, examples in sorted(figures.findings.items()):
        lines.append(f"- **{kind}**: {figures.finding_counts[kind]}")
        lines += [f"  - `{e}`" for e in examples]
    if not figures.findings and not figures.restarts:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-inputs", type=int, default=6000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "robustness.md")
    parser.add_argument("--keep", action="store_true", help="keep the appliance's home")
    args = parser.parse_args()
    revision = commit()
    folder = Path(tempfile.mkdtemp(prefix="nn-fuzz-home-"))
    try:
        appliance = Appliance.create(folder / "home")
        with running(appliance):
            token = technologist_token(appliance.settings, appliance.password)
            budget = Budget(args.max_inputs, args.max_seconds)
            figures = fuzz(appliance.settings, token, budget, args.seed)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    text = report(figures, budget, revision)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
