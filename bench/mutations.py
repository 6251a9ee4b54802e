"""Fuzz inputs for ``bench/fuzz.py``: a corpus of Part 10 objects and seeded mutations of
objects and URLs. Pure functions of a :class:`random.Random`, so one seed gives one run.

The corpus is pydicom's test files (the folder itself: ``get_testdata_files('*')`` tries
the network, design.md fact 8) that are whole Part 10 objects, and a synthetic CT slice.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import shutil
import struct
import subprocess
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from bench.synthetic import ct_file_dataset, make_slices

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
DCMDUMP = shutil.which("dcmdump") or "/usr/bin/dcmdump"
BOMB_BYTES = 512 * 1024**2  # what a deflate bomb inflates to
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})


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
        return dcmwrite_bytes(self.dataset, enforce_file_format=True)


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


def read_quietly(path: Path) -> Dataset | None:
    """``path`` as pydicom reads it (forced, warnings silenced); None if it cannot."""
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)
    return None


def syntax_of(ds: Dataset | None) -> UID:
    """The transfer syntax of a data set read from a file (Implicit VR if it names none)."""
    meta = getattr(ds, "file_meta", None) or {}
    return UID(str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)))


def dcmwrite_bytes(ds: Dataset, enforce_file_format: bool = False) -> bytes:
    """What ``pydicom.dcmwrite`` writes of ``ds``, as many modalities' software does."""
    written = io.BytesIO()
    pydicom.dcmwrite(written, ds, enforce_file_format=enforce_file_format)
    return written.getvalue()


def dcmtk_refuses(paths: list[Path]) -> set[Path]:
    """The files DCMTK's ``dcmdump`` cannot read whole: it names each on an error line, and
    its exit status counts them."""
    refused: set[Path] = set()
    for start in range(0, len(paths), 200):
        batch = [str(p) for p in paths[start : start + 200]]
        done = subprocess.run(
            [DCMDUMP, "--log-level", "error", *batch],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace",
        )  # fmt: skip
        found = re.findall(r"^E: dcmdump: .*: reading file: (.*)$", done.stderr, re.MULTILINE)
        if done.returncode != len(found):  # its count of failures
            raise RuntimeError(f"dcmdump exited {done.returncode}: {done.stderr[-2000:]}")
        refused |= {Path(p) for p in found}
    return refused


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


# --------------------------------------------------------------------------- URLs


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


def mutate_url(rng: random.Random, url: str) -> tuple[str, str]:
    """``url`` with 1-3 edits: inserted, replaced or deleted tokens, query parameters."""
    labels = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["insert", "replace", "delete", "query", "query", "segment"])
        url = _URL_EDITS[kind](rng, url or "/")
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
    parts[rng.randrange(len(parts))] = rng.choice(TOKENS)
    return "/".join(parts) + sep + query


_URL_EDITS: dict[str, Callable[[random.Random, str], str]] = {
    "insert": _insert, "replace": _replace, "delete": _delete, "query": _query,
    "segment": _segment,
}  # fmt: skip
