"""The receiver's whole-object check agrees with DCMTK, whose parser Orthanc uses: every
object the check accepts, DCMTK's ``dcmdump`` reads whole (issue 17).

The objects: every file of pydicom's test folder as it is; each as pydicom writes it back
(``dcmwrite``) and as pynetdicom sends it in a C-STORE (``pynetdicom.dsutils.encode``,
behind the file meta the receiver's pynetdicom writes); the fuzz run's seeded
mutations of them (``bench/mutations.py``); and the files with sequences, sent with all
lengths defined or all undefined, cut short at random places, as they are and as pydicom
reads the cut object and pynetdicom sends it again. Before the check walked nested
lengths, 261 of those re-sent cuts slipped through (as did the plan pydicom reads from
``rtplan_truncated.dcm``, re-encoded either way): acknowledged, then refused by Orthanc.
"""

from __future__ import annotations

import contextlib
import io
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom.dsutils import encode

from appliance.ingest.header import HEADER_KEYWORDS
from appliance.ingest.part10 import scan_file
from bench.mutations import (
    TEST_FILES,
    corpus,
    dcmtk_refuses,
    dcmwrite_bytes,
    file_meta,
    mutate,
    read_quietly,
    split_part10,
    syntax_of,
    uid_for,
)

MUTANTS = 1500
CUTS = 25  # per file with sequences and way of encoding their lengths
SEED = 17
KINDS = ("as is", "dcmwrite", "pynetdicom", "mutation", "cut", "cut, re-sent")
LIMIT = 256 * 1024**2
# A file without a preamble or a meta group length is refused by the check and read by
# DCMTK; the receiver never sees one (its pynetdicom writes both).
NOT_PART10 = ("the file has no DICOM preamble", "the file meta has no group length")
# The one whole-looking file the check refuses and DCMTK reads: its last directory record
# declares 24 bytes more than the file holds. DCMTK (and pydicom) stop at the end of the
# file without a word when it falls between two elements; the check calls it truncated.
SHORT_BY_AN_ELEMENT = {
    "dicomdirtests/DICOMDIR-nooffset": "an item overruns (0004,1220) by 24 bytes"
}


@dataclass(frozen=True)
class Outcome:
    """One object: how it was made, and what each side made of it."""

    label: str
    kind: str  # "as is", "dcmwrite", "pynetdicom", "mutation"
    refusal: str | None  # the check's reason, None when it accepts
    dcmtk_reads: bool


@dataclass(frozen=True)
class Case:
    label: str
    kind: str
    path: Path
    syntax: str


def _pynetdicom(ds: pydicom.Dataset) -> bytes:
    """What the receiver's file holds when pynetdicom sends ``ds`` in a C-STORE."""
    syntax = syntax_of(ds)
    body = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    if body is None or "SOPClassUID" not in ds:  # pynetdicom could not send it
        raise ValueError("not sendable")
    return file_meta(str(ds.SOPClassUID), str(ds.get("SOPInstanceUID", "1.2")), syntax) + body


def corpus_cases(folder: Path) -> list[Case]:
    """Every file of pydicom's test folder as it is, written back, and as sent."""
    cases = []
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        name = str(path.relative_to(TEST_FILES))
        ds = read_quietly(path)
        cases.append(Case(name, "as is", path, syntax_of(ds)))
        for kind, writer in (("dcmwrite", dcmwrite_bytes), ("pynetdicom", _pynetdicom)):
            with warnings.catch_warnings(), contextlib.suppress(Exception):
                warnings.simplefilter("ignore")
                target = folder / f"{kind}-{len(cases)}.dcm"
                target.write_bytes(writer(ds))
                cases.append(Case(name, kind, target, syntax_of(ds)))
    return cases


def mutation_cases(folder: Path, count: int, seed: int) -> list[Case]:
    """The fuzz run's mutations (``bench.mutations.mutate``), ``count`` of them."""
    rng = random.Random(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeds = corpus()
        cases = []
        for index in range(count):
            mutant = mutate(rng, seeds[index % len(seeds)], uid_for(rng), bomb=False)
            target = folder / f"mutant-{index}.dcm"
            target.write_bytes(mutant.data)
            label = f"{seeds[index % len(seeds)].name}: {mutant.label}"
            cases.append(Case(label, "mutation", target, mutant.syntax))
    return cases


def _with_lengths(ds: pydicom.Dataset, undefined: bool) -> None:
    """Every sequence and item of ``ds`` to be written with an undefined length, or not."""
    for elem in ds:
        if elem.VR == "SQ":
            elem.is_undefined_length = undefined
            for item in elem.value:
                item.is_undefined_length_sequence_item = undefined
                _with_lengths(item, undefined)


def _resent(data: bytes, syntax: UID) -> bytes:
    """What pynetdicom sends of the object pydicom reads from ``data``."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    body = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian)
    if body is None:
        raise ValueError("not sendable")
    return split_part10(data)[0] + body


def cut_cases(folder: Path, cuts: int, seed: int) -> list[Case]:
    """The files with sequences, their lengths defined or undefined, cut at ``cuts``
    random places: as cut, and re-sent (read by pydicom, sent by pynetdicom)."""
    rng, cases = random.Random(seed), []
    for name, ds in _with_sequences():
        for undefined in (False, True):
            _with_lengths(ds, undefined)
            data, syntax = _pynetdicom(ds), syntax_of(ds)
            start = len(split_part10(data)[0])
            for cut in rng.sample(range(start + 1, len(data)), min(cuts, len(data) - start - 1)):
                label = f"{name}, {'un' if undefined else ''}defined lengths, cut at {cut}"
                _add_cut(cases, folder, data[:cut], syntax, label)
    return cases


def _add_cut(cases: list[Case], folder: Path, data: bytes, syntax: UID, label: str) -> None:
    """The cut object, and (when pydicom reads it and pynetdicom can send it) re-sent."""
    for kind in ("cut", "cut, re-sent"):
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            target = folder / f"cut-{len(cases)}.dcm"
            target.write_bytes(data if kind == "cut" else _resent(data, syntax))
            cases.append(Case(label, kind, target, syntax))


def _with_sequences() -> list[tuple[str, pydicom.Dataset]]:
    """pydicom's test files (not deflated) with a sequence, that pynetdicom can send."""
    found = []
    for path in sorted(TEST_FILES.glob("*.dcm")):
        ds = read_quietly(path)
        if ds is not None and not syntax_of(ds).is_deflated and "SOPClassUID" in ds:
            with contextlib.suppress(Exception):
                if any(elem.VR == "SQ" for elem in ds):
                    found.append((path.name, ds))
    return found


def check_refusal(case: Case) -> str | None:
    """The receiver's reason for refusing the object, None when it accepts it."""
    try:
        scan_file(case.path, case.syntax, HEADER_KEYWORDS, LIMIT)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> list[Outcome]:
    folder = tmp_path_factory.mktemp("agreement")
    cases = corpus_cases(folder) + mutation_cases(folder, MUTANTS, SEED)
    cases += cut_cases(folder, CUTS, SEED)
    refused = dcmtk_refuses([c.path for c in cases])
    return [Outcome(c.label, c.kind, check_refusal(c), c.path not in refused) for c in cases]


def summary(outcomes: list[Outcome]) -> str:
    """Per kind: objects, agreements, accepted by both, refused by the check only."""
    lines = []
    for kind in KINDS:
        rows = [o for o in outcomes if o.kind == kind]
        agree = sum((o.refusal is None) == o.dcmtk_reads for o in rows)
        both = sum(o.refusal is None and o.dcmtk_reads for o in rows)
        stricter = sum(o.refusal is not None and o.dcmtk_reads for o in rows)
        lines.append(f"{kind}: {len(rows)} objects, {agree} agree ({both} accepted by both), "
                     f"{stricter} refused by the check only")  # fmt: skip
    return "\n".join(lines)


def test_every_object_the_check_accepts_dcmtk_reads_whole(outcomes):
    slipped = [f"{o.kind} {o.label}" for o in outcomes if o.refusal is None and not o.dcmtk_reads]
    print(summary(outcomes))
    assert not slipped, "\n".join(slipped)


def test_on_unmutated_objects_the_check_refuses_only_what_is_not_whole(outcomes):
    """The corpus and its re-encodings: no object is refused that DCMTK reads, apart from
    files the receiver never gets (no preamble, no group length) and one that is short."""
    stricter = {
        f"{o.kind} {o.label}": o.refusal
        for o in outcomes
        if o.kind in KINDS[:3] and o.refusal not in (None, *NOT_PART10) and o.dcmtk_reads
    }
    expected = {f"{kind} {name}": reason for name, reason in SHORT_BY_AN_ELEMENT.items()
                for kind in ("as is", "dcmwrite")}  # fmt: skip
    assert stricter == expected


def test_the_objects_cover_every_kind_and_both_answers(outcomes):
    kinds = {kind: [o for o in outcomes if o.kind == kind] for kind in KINDS}
    assert len(kinds["as is"]) > 80 and len(kinds["mutation"]) == MUTANTS
    assert len(kinds["pynetdicom"]) > 60 and len(kinds["dcmwrite"]) > 60
    assert len(kinds["cut"]) > 500 and len(kinds["cut, re-sent"]) > 500
    for rows in kinds.values():
        assert any(o.refusal is None for o in rows) and any(not o.dcmtk_reads for o in rows)


@pytest.mark.parametrize("kind", ["dcmwrite", "pynetdicom"])
def test_the_plan_that_slipped_through_is_refused_by_both(outcomes, kind):
    (plan,) = [o for o in outcomes if o.kind == kind and o.label == "rtplan_truncated.dcm"]
    assert not plan.dcmtk_reads
    assert plan.refusal == "an item overruns (300A,00B0) by 265 bytes"
