"""Robustness: a bounded, seeded fuzz run against the real appliance, on loopback only.

What goes in:

* Part 10 objects: pydicom's test files and a synthetic CT slice, each under a fresh SOP
  Instance UID, then mutated (:mod:`bench.mutations`): byte flips, truncation, a
  corrupted length field, a duplicated element, a deflated data set (valid, corrupt,
  truncated, or a bomb that inflates to 512 MiB). They are sent by C-STORE
  with pynetdicom (one presentation context per SOP class and transfer syntax, the data
  set as it is, design.md fact 14) or by STOW-RS through nginx with a technologist's
  token, some STOW bodies also broken at the multipart level.
* Re-encoded corpus objects: every file of pydicom's test folder read and written back by
  pydicom (``dcmwrite``, as many modalities' software writes them) under a fresh SOP
  Instance UID, sent by C-STORE; the receiver's answer is compared with DCMTK's ``dcmdump``
  on the same bytes (its exit status): an object acknowledged that dcmdump refuses is a
  finding (Orthanc would refuse it after the modality deleted its copy).
* Requests: valid gateway URLs (QIDO, WADO, frames, the app's API) mutated in path,
  query, method and credentials, written raw to nginx; raw request heads written
  straight to the frame gate.

* Backups: one real ``neuronova backup`` of the appliance (the known object in it), copied
  and mutated (:mod:`bench.backup_mutations`): manifest fields (paths with '..', absolute,
  long, NUL, into the folders restore makes itself; modes with high bits; sizes; digests
  naming paths or other objects; type confusions; dropped and extra keys), the encrypted
  manifest's or key record's bytes (truncated, bits flipped, nested, garbage), or one
  object (flipped, truncated, deleted, a link out, a folder, a FIFO, another's content); a
  changed manifest is encrypted again with the home's key three times in four, else
  written in the clear. Each copy goes to ``neuronova restore --key-file``, after the rest
  of the run.

What is checked:

* every HTTP answer arrives and is below 500;
* every acknowledged object (C-STORE Success, or listed in a STOW answer's
  ReferencedSOPSequence) ends ``stored`` in the journal and in Orthanc, or ``failed`` with
  a reason that ``neuronova ingest status --json`` lists; any other end counts as lost;
* no supervised process restarted (pids and states in ``run/supervisor.json``);
* each restore of a mutated backup ends with an ``Error:`` line (exit 1, no traceback), the
  target absent or empty and nothing new beside it; a restore that succeeds is a finding
  unless its manifest was signed again and validates, or its text still reads as the same
  manifest (then it must stay inside the target, with no set-uid, set-gid or sticky file).

Bounded by count and time; the same seed gives the same inputs::

    python bench/fuzz.py                          # at most 10 + 5 minutes; robustness.md
    python bench/fuzz.py --max-seconds 60 --max-inputs 300 --restores 20 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, StoragePresentationContexts
from pynetdicom import _config as pynetdicom_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import loopback
from appliance.config import Settings, settings_environment
from appliance.ingest.receiver import TRANSFER_SYNTAXES
from appliance.store.orthanc import orthanc_auth_header, orthanc_url
from bench.backup_mutations import Target, mutate_backup
from bench.harness import LOOPBACK, REPO, Appliance, http, python_env, running
from bench.mutations import (
    TEST_FILES,
    Mutant,
    Seed,
    corpus,
    dcmtk_refuses,
    dcmwrite_bytes,
    journal_keys,
    mutate,
    mutate_url,
    read_quietly,
    syntax_of,
    uid_for,
)

FUZZ_USER, FUZZ_AE = "fuzz.tech", "FUZZSCU"
BOMB_EVERY = 250  # objects 5, 255, 505, ... are deflate bombs
ASSOCIATION_BATCH = 16
SETTLE_UNTIL = 0.95  # share of the time budget; the checks after it take seconds
ANSWER_TIMEOUT = 20.0
EXAMPLES = 12  # findings listed per kind in the report
STORAGE_CLASSES = frozenset(c.abstract_syntax for c in StoragePresentationContexts)
DICOMWEB = "/api/pacs/dicom-web"
QUOTED_BYTES = re.compile(r"b'[^']*'")  # varies per input; one example per kind is enough
# The receiver's catch-all and pynetdicom's answer when a handler raised: a bad object
# should get a specific status (0xC000 and its reason, 0xA700, ...).
UNEXPECTED_STATUSES = {
    0x0110: "C-STORE 0x0110 (the receiver's catch-all for unexpected errors)",
    0xC211: "C-STORE 0xC211 (unhandled error in the receiver)",
}
SUCCESS_STATUSES = frozenset({0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007})
RESTORE_TIMEOUT = 120.0  # one restore of the small backup takes seconds


# --------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """At most ``max_inputs`` inputs and ``max_seconds`` of wall time for the run against
    the appliance; then at most ``restores`` restores of mutated backups in at most
    ``restore_seconds``."""

    max_inputs: int
    max_seconds: float
    restores: int = 0  # restores of mutated backups, after the rest and on top of its time
    restore_seconds: float = 0.0
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
    after: dict[str, int] = field(default_factory=dict)  # check after the run -> HTTP status
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
        """5xx answers, every channel."""
        return sum(n for kind, n in self.finding_counts.items() if kind.startswith("5xx"))

    @property
    def tracebacks(self) -> int:
        """Tracebacks in the appliance's logs, every kind."""
        return sum(n for kind, n in self.finding_counts.items() if kind.startswith("traceback"))

    @property
    def restore_findings(self) -> int:
        """Restores of mutated backups that did anything but refuse cleanly (or restore
        inside the target a manifest signed again that validates)."""
        return sum(n for kind, n in self.finding_counts.items() if kind.startswith("restore:"))

    @property
    def lost(self) -> int:
        return self.objects["lost"]


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
        assoc = ae.associate(LOOPBACK, settings.dicom.port, ae_title=settings.dicom.ae_title)
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
    code, comment = int(status.Status), str(status.get("ErrorComment", "")).strip()
    figures.answer("c-store", f"{code:#06x}")
    if code in UNEXPECTED_STATUSES:
        figures.finding(UNEXPECTED_STATUSES[code], f"{comment!r}: {mutant.label}")
    if code in SUCCESS_STATUSES:
        return Sent("c-store", mutant.label, journal_keys(mutant, sop_uid))
    if not comment:
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
    url = f"http://{LOOPBACK}:{settings.web.http_port}{DICOMWEB}/studies"
    labels = " | ".join(m.label for m, _ in items) + (f" [{broken}]" if broken else "")
    try:
        status, _, answer = http(url, body, headers, timeout=120)
    except OSError as exc:
        figures.finding("STOW without an answer", f"{exc!r}: {labels}")
        return []
    figures.answer("stow", str(status))
    if status >= 500:
        figures.finding("5xx from stow", f"{status} {answer[:120]!r}: {labels}")
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
    figures.objects["acknowledged"] += len(acknowledged)
    for item in acknowledged:
        if "bomb" in item.label:
            figures.finding("deflate bomb acknowledged", f"{item.channel}: {item.label}")
    return acknowledged


def _next_mutant(rng: random.Random, seeds: list[Seed], index: int) -> tuple[Mutant, str]:
    sop_uid = uid_for(rng)
    bomb = index % BOMB_EVERY == 5
    return mutate(rng, rng.choice(seeds), sop_uid, bomb), sop_uid


def _cstore_can_send(mutant: Mutant) -> bool:
    """Whether the receiver offers a presentation context for it at all."""
    return mutant.sop_class in STORAGE_CLASSES and mutant.syntax in TRANSFER_SYNTAXES


def reencoded_objects(rng: random.Random) -> list[tuple[Mutant, str]]:
    """Every file of pydicom's test folder as pydicom reads it and writes it back
    (``dcmwrite``), under a fresh SOP Instance UID: those that are Part 10 objects the
    receiver offers a presentation context for."""
    made = []
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        ds, sop_uid = read_quietly(path), uid_for(rng)
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            label = f"re-encoded {path.relative_to(TEST_FILES)}"
            mutant = Mutant(dcmwrite_bytes(ds), label, str(ds.file_meta.MediaStorageSOPClassUID),
                            str(syntax_of(ds)))  # fmt: skip
            if mutant.data[128:132] == b"DICM" and _cstore_can_send(mutant):
                made.append((mutant, sop_uid))
    return made


def send_reencoded(settings: Settings, seed: int, figures: Figures) -> list[Sent]:
    """Re-encoded corpus objects by C-STORE: the receiver acknowledges only what DCMTK's
    ``dcmdump`` reads whole (its exit status), as Orthanc would."""
    items = reencoded_objects(random.Random(seed + 4))
    figures.inputs["re-encoded corpus objects by C-STORE"] += len(items)
    with tempfile.TemporaryDirectory(prefix="nn-fuzz-") as tmp, raw_datasets():
        acknowledged = cstore_batch(settings, items, Path(tmp), figures)
        paths = [Path(tmp) / f"{index}.dcm" for index in range(len(items))]
        for path, (mutant, _) in zip(paths, items, strict=True):
            path.write_bytes(mutant.data)
        refused = dcmtk_refuses(paths)
    labels = {sent.label for sent in acknowledged}
    for path, (mutant, _) in zip(paths, items, strict=True):
        answer = "acknowledged" if mutant.label in labels else "refused"
        dcmtk = "refuses" if path in refused else "reads"
        figures.answer("re-encoded", f"{answer}, dcmdump {dcmtk}")
        if (answer, dcmtk) == ("acknowledged", "refuses"):
            figures.finding("re-encoded object acknowledged, dcmdump refuses it", mutant.label)
    figures.objects["acknowledged"] += len(acknowledged)
    return acknowledged


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

    @property
    def frame_url(self) -> str:
        """The gateway path of its first frame."""
        return (f"{DICOMWEB}/studies/{self.study}/series/{self.series}"
                f"/instances/{self.instance}/frames/1")  # fmt: skip


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


GATE_EXTRAS = ["", "", "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
               "Content-Length: 5\r\n\r\nhello", "Upgrade: websocket\r\nConnection: upgrade\r\n",
               "X-Long: " + "a" * 40000 + "\r\n", "Accept: " + "x," * 3000 + "\r\n",
               "Bad Header\r\n", "Accept: a\r\nAccept: b\r\n"]  # fmt: skip
METHODS = ["GET"] * 8 + ["HEAD", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]
WRITE_PATHS = ("/api/admin", "/api/auth/logout", "/api/shares", "/api/auth/refresh")


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
        _exchange(settings.web.http_port, request, "nginx", label, figures)


def _exchange(
    port: int, request: bytes, channel: str, label: str, figures: Figures
) -> Answer | None:
    """Send one raw request and count its answer; None if the connection failed.

    The frame gate gets a half-closed connection (it may be waiting for more of a
    malformed request); closing without an answer is then counted, not a finding.
    """
    gate = channel == "frame gate"
    try:
        answer = raw_http(port, request, half_close=gate)
    except OSError as exc:
        figures.finding(f"{channel}: connection failed", f"{exc!r}: {label}")
        return None
    if answer.status is not None:
        _count(answer.status, answer, channel, label, figures)
    elif gate and not answer.body:
        figures.answer(channel, "closed without answer")
    else:
        figures.answer(channel, "no answer")
        figures.finding(f"{channel}: no HTTP answer", f"{label} -> {answer.body[:80]!r}")
    return answer


def _count(status: int, answer: Answer, channel: str, label: str, figures: Figures) -> None:
    """Count the answer by status class (and JSON body or not); a 5xx is a finding."""
    json_body = answer.headers.get("content-type", "").startswith(
        ("application/json", "application/dicom+json")
    )
    figures.answer(channel, f"{status // 100}xx" + (" (JSON body)" if json_body else ""))
    if status >= 500:
        figures.finding(f"5xx from {channel}", f"{status}: {label} -> {answer.body[:120]!r}")


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
    deadline, count = budget.deadline(0.85), budget.count(0.15)
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        request, label, authorized = gate_request(rng, known.frame_url, token)
        figures.inputs["raw requests to the frame gate"] += 1
        answer = _exchange(settings.internal.gate_port, request, "frame gate", label, figures)
        if answer is None or answer.status is None:
            continue
        redirect = answer.headers.get("x-accel-redirect", "")
        if redirect.startswith("/internal-frames/") and not authorized:
            figures.finding("frame gate granted a frame without a token", label)


# --------------------------------------------------------------------------- outcome


def journal(settings: Settings) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (state, error) for every journal row (read-only)."""
    uri = f"file:{settings.layout.database_file}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        rows = db.execute("SELECT sop_uid, state, coalesce(error, '') FROM instances")
        return {sop: (state, error) for sop, state, error in rows}


def in_orthanc(settings: Settings, sop_uid: str) -> bool:
    """Whether Orthanc holds an instance with this SOP Instance UID."""
    request = urllib.request.Request(
        orthanc_url(settings) + "/tools/lookup", data=sop_uid.encode(), method="POST",
        headers={"Authorization": orthanc_auth_header(settings), "Content-Type": "text/plain"},
    )  # fmt: skip
    with loopback.urlopen(request, timeout=30) as resp:
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
    """Count each acknowledged object: stored, failed (visibly), still in the pipeline when
    the run ended (received or processing, e.g. retrying), or lost (anything else)."""
    rows = settle(settings, sent, deadline)
    shown = {row["sop_uid"]: row["error"] for row in ingest_status(settings)["failed"]}
    for item in sent:
        state, error, key = _state(rows, item.keys)
        what = f"{item.channel} {item.label}: {state} {error[:120]!r}"
        if state == "stored" and in_orthanc(settings, key):
            figures.objects["stored"] += 1
        elif state == "failed" and error and shown.get(key):
            figures.objects["failed, reason shown"] += 1
        elif state in ("received", "processing"):
            figures.objects["unsettled"] += 1
            figures.finding("acknowledged object still in the pipeline at the end", what)
        else:
            figures.objects["lost"] += 1
            figures.finding("acknowledged object lost", what)


def supervisor_children(settings: Settings) -> dict[str, tuple[int, str]]:
    """Child name -> (pid, state) from ``run/supervisor.json``."""
    state = json.loads(settings.layout.state_file.read_text())
    return {name: (c["pid"], c["state"]) for name, c in state["children"].items()}


def log_sizes(settings: Settings) -> dict[Path, int]:
    """Each appliance log file and its size now."""
    return {path: path.stat().st_size for path in settings.layout.log_dir.glob("*.log")}


def new_tracebacks(settings: Settings, since: dict[Path, int]) -> list[tuple[str, str]]:
    """(log file, exception line) of each traceback logged after ``since`` (:func:`log_sizes`)."""
    found = []
    for path in sorted(settings.layout.log_dir.glob("*.log")):
        with path.open("rb") as log:
            start = since.get(path, 0)
            log.seek(start if start <= path.stat().st_size else 0)  # 0: rotated meanwhile
            lines = log.read().decode(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)"):
                last = next((ln for ln in lines[index + 1 :] if not ln.startswith(" ")), "?")
                found.append((path.name, QUOTED_BYTES.sub("b'...'", last)))
    return found


# --------------------------------------------------------------------------- backups


def take_backup(settings: Settings, dest: Path) -> None:
    """``neuronova backup DEST`` of the running appliance (it holds the known object)."""
    command = [sys.executable, "-m", "appliance", "backup", str(dest), "--home", str(settings.home)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=appliance_env(settings))  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"the backup to mutate failed: {done.stderr[-2000:]}")


def restore_mutants(settings: Settings, backup: Path, budget: Budget, seed: int,
                    figures: Figures) -> None:  # fmt: skip
    """``neuronova restore`` of mutated copies of ``backup``: each must be refused with an
    ``Error:`` line and nothing written (the target absent or empty, nothing beside it),
    unless the manifest was encrypted again with the key and still validates."""
    rng, key_file = random.Random(seed + 3), settings.layout.backup_key_file
    key, deadline = key_file.read_bytes().strip(), time.monotonic() + budget.restore_seconds
    with tempfile.TemporaryDirectory(prefix="nn-fuzz-restore-") as tmp:
        for index in range(budget.restores):
            if time.monotonic() > deadline:
                break
            target = Target(Path(tmp) / str(index))
            shutil.copytree(backup, target.backup, symlinks=True)
            target.place.mkdir()
            if rng.random() < 0.3:
                target.home.mkdir()  # restore also takes an empty folder
            label, may_restore = mutate_backup(rng, target, key)
            figures.inputs["restores of mutated backups"] += 1
            before = _tree(target.case)
            command = [sys.executable, "-m", "appliance", "restore", str(target.backup),
                       "--home", str(target.home), "--key-file", str(key_file)]  # fmt: skip
            try:
                done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                      timeout=RESTORE_TIMEOUT, env=python_env())  # fmt: skip
            except subprocess.TimeoutExpired:
                figures.finding("restore: no end within the timeout", label)
                continue
            _judge_restore(done, target, before, may_restore, label, figures)
            shutil.rmtree(target.case)


def _judge_restore(done: subprocess.CompletedProcess, target: Target, before: set[str],
                   may_restore: bool, label: str, figures: Figures) -> None:  # fmt: skip
    """Count one restore's outcome; anything but a clean refusal (or, when ``may_restore``,
    a clean restore inside the target) is a finding."""
    lines = done.stderr.strip().splitlines() or [""]
    what = f"{label}: exit {done.returncode}, {lines[-1][:160]!r}"
    outside = sorted(_tree(target.case) - before)
    if outside:
        figures.finding("restore: wrote outside the target", f"{outside[:3]} {what}")
    if "Traceback" in done.stderr:
        figures.finding("restore: traceback", what)
    if done.returncode == 0:
        figures.answer("restore", "restored")
        if not may_restore:
            figures.finding("restore: a tampered backup was restored", what)
        elif any(p.stat(follow_symlinks=False).st_mode & 0o7000 for p in target.home.rglob("*")):
            figures.finding("restore: a set-uid, set-gid or sticky file", what)
        return
    if done.returncode != 1 or not lines[-1].startswith("Error: "):
        figures.answer("restore", f"exit {done.returncode} without an Error: line")
        figures.finding("restore: no Error: line", what)
    elif target.home.exists() and (not target.home.is_dir() or any(target.home.iterdir())):
        figures.answer("restore", "refused, left files in the target")
        figures.finding("restore: refused but wrote into the target", what)
    else:
        figures.answer("restore", "refused (Error: line), nothing written")


def _tree(case: Path) -> set[str]:
    """Every path under ``case`` (links not followed) but those inside the target."""
    target = Target(case).home
    return {str(path.relative_to(case)) for path in case.rglob("*")
            if path != target and target not in path.parents}  # fmt: skip


# --------------------------------------------------------------------------- the run


def store_known(settings: Settings, token: str) -> Known:
    """Store one unmutated object by STOW-RS and wait for it, for valid URLs to mutate."""
    seed = corpus()[-1]
    sop_uid = uid_for(random.Random("the known object"))  # never one of the fuzz inputs
    boundary = "fuzzknown"
    url = f"http://{LOOPBACK}:{settings.web.http_port}{DICOMWEB}/studies"
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
    with tempfile.TemporaryDirectory(prefix="nn-fuzz-backup-") as backup:
        if budget.restores:
            take_backup(settings, Path(backup))
        sent = send_reencoded(settings, seed, figures)
        sent += send_objects(settings, token, budget, seed, figures)
        fuzz_gateway(settings, token, known, budget, seed, figures)
        fuzz_frame_gate(settings, token, known, budget, seed, figures)
        account(settings, sent, budget.deadline(SETTLE_UNTIL), figures)
        after = supervisor_children(settings)
        figures.restarts = [f"{name}: {before[name]} -> {after.get(name)}"
                            for name in before if after.get(name) != before[name]]  # fmt: skip
        figures.after = still_serving(settings, token, known, figures)
        for log, line in new_tracebacks(settings, logs):
            figures.finding(f"traceback in {log}: {line.split(':')[0]}", line)
        if budget.restores:
            restore_mutants(settings, Path(backup), budget, seed, figures)
    figures.seconds = round(time.monotonic() - budget.start, 1)
    return figures


def still_serving(settings: Settings, token: str, known: Known, figures: Figures) -> dict[str, int]:
    """After the run: ``/api/health`` and the known object's first frame through nginx."""
    base = f"http://{LOOPBACK}:{settings.web.http_port}"
    bearer = {"Authorization": f"Bearer {token}"}
    answers = {
        "/api/health": http(base + "/api/health"),
        "the known object's frame 1": http(base + known.frame_url, None, bearer),
    }
    for what, (status, _, body) in answers.items():
        if status != 200:
            figures.finding("not serving after the run", f"{what}: {status} {body[:200]!r}")
    return {what: answer[0] for what, answer in answers.items()}


def technologist_token(settings: Settings, password: str) -> str:
    """Add the fuzz user (technologist: may STOW) and log in through nginx."""
    command = [sys.executable, "-m", "appliance", "user", "add", FUZZ_USER, "--role",
               "technologist", "--password-stdin", "--home", str(settings.home)]  # fmt: skip
    subprocess.run(command, input=password + "\n", capture_output=True, text=True,
                   env=appliance_env(settings), timeout=60, check=True)  # fmt: skip
    body = json.dumps({"username": FUZZ_USER, "password": password}).encode()
    url = f"http://{LOOPBACK}:{settings.web.http_port}/api/auth/login"
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
        f"{budget.max_seconds:.0f} s, then at most {budget.restores} restores in "
        f"{budget.restore_seconds:.0f} s; ran {figures.seconds:.0f} s. Command: "
        f"`python bench/fuzz.py --seed {figures.seed} --max-inputs {budget.max_inputs} "
        f"--max-seconds {budget.max_seconds:.0f} --restores {budget.restores} "
        f"--restore-seconds {budget.restore_seconds:.0f}` (see its docstring for what is sent).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| inputs tried | {inputs} |",
        *[f"| - {kind} | {n} |" for kind, n in sorted(figures.inputs.items())],
        f"| HTTP answers 5xx | {figures.server_errors} |",
        f"| crashes (supervised processes restarted) | {len(figures.restarts)} |",
        *[f"| after the run: {what} | HTTP {status} |" for what, status in figures.after.items()],
        f"| objects acknowledged | {figures.objects['acknowledged']} |",
        f"| - stored (journal and Orthanc) | {figures.objects['stored']} |",
        f"| - failed, reason shown by `neuronova ingest status` | "
        f"{figures.objects['failed, reason shown']} |",
        f"| - still in the pipeline when the run ended | {figures.objects['unsettled']} |",
        f"| objects acknowledged but lost | {figures.lost} |",
        f"| tracebacks in the appliance's logs | {figures.tracebacks} |",
        f"| re-encoded objects acknowledged that dcmdump refuses | "
        f"{figures.finding_counts['re-encoded object acknowledged, dcmdump refuses it']} |",
        f"| restores of mutated backups not refused cleanly | {figures.restore_findings} |",
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
    parser.add_argument("--max-inputs", type=int, default=60000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--restores", type=int, default=400,
                        help="restores of mutated backups, after the rest")  # fmt: skip
    parser.add_argument("--restore-seconds", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "robustness.md")
    parser.add_argument("--keep", action="store_true", help="keep the appliance's home")
    args = parser.parse_args()
    revision = commit()
    folder = Path(tempfile.mkdtemp(prefix="nn-fuzz-home-"))
    try:
        appliance = Appliance.create(folder / "home")
        with running(appliance):
            token = technologist_token(appliance.settings, appliance.password)
            budget = Budget(args.max_inputs, args.max_seconds, args.restores,
                            args.restore_seconds)  # fmt: skip
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
