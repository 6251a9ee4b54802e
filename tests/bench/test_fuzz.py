"""A short, seeded fuzz run against the real appliance (``bench/fuzz.py``).

Mutated Part 10 objects by C-STORE and STOW-RS, pydicom's test files re-encoded by pydicom
by C-STORE (compared with DCMTK), mutated paths and queries through nginx, raw request
heads to the frame gate, then restores of mutated backups. ``bench/fuzz.py`` with its
defaults (10 + 5 minutes) writes ``bench/results/robustness.md``; this runs the same
inputs for about a minute and a half (``NEURONOVA_FUZZ_SECONDS``, ``NEURONOVA_FUZZ_INPUTS``,
``NEURONOVA_FUZZ_RESTORES`` and ``NEURONOVA_FUZZ_RESTORE_SECONDS`` change the bounds).
"""

from __future__ import annotations

import os
import secrets

import pytest

from bench.fuzz import UNEXPECTED_STATUSES, Budget, Figures, fuzz, technologist_token
from tests.support.running import make_appliance

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("NEURONOVA_FUZZ_SECONDS", "75"))
INPUTS = int(os.environ.get("NEURONOVA_FUZZ_INPUTS", "1500"))
RESTORES = int(os.environ.get("NEURONOVA_FUZZ_RESTORES", "12"))
RESTORE_SECONDS = float(os.environ.get("NEURONOVA_FUZZ_RESTORE_SECONDS", "20"))
SEED = 7


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> Figures:
    """The figures of one bounded run on an appliance of its own."""
    appliance = make_appliance(tmp_path_factory.mktemp("fuzz")).start()
    try:
        token = technologist_token(appliance.settings, secrets.token_urlsafe(18))
        return fuzz(appliance.settings, token,
                    Budget(INPUTS, SECONDS, RESTORES, RESTORE_SECONDS), SEED)  # fmt: skip
    finally:
        appliance.stop()


def examples(figures: Figures, kind: str) -> str:
    return "\n".join(figures.findings.get(kind, []))


def test_the_run_tried_every_kind_of_input(figures):
    for kind in ("objects by C-STORE", "objects by STOW-RS", "requests through nginx",
                 "raw requests to the frame gate", "re-encoded corpus objects by C-STORE",
                 "restores of mutated backups"):  # fmt: skip
        assert figures.inputs[kind] > 0, kind
    assert figures.objects["acknowledged"] > 0


@pytest.mark.parametrize(
    "channel",
    [
        "nginx",
        "frame gate",
        "stow",
    ],
)
def test_no_answer_is_a_server_error(figures, channel):
    kind = f"5xx from {channel}"
    assert not figures.finding_counts[kind], examples(figures, kind)


def test_every_request_gets_an_answer(figures):
    silent = {k: v for k, v in figures.findings.items() if "answer" in k}
    assert not silent, silent


def test_no_supervised_process_restarted(figures):
    assert figures.restarts == []


def test_health_answers_200_after_the_run(figures):
    assert figures.after["/api/health"] == 200, examples(figures, "not serving after the run")


def test_a_stored_frame_is_served_after_the_run(figures):
    status = figures.after["the known object's frame 1"]
    assert status == 200, examples(figures, "not serving after the run")


def test_every_acknowledged_object_is_stored_or_visibly_failed(figures):
    assert figures.lost == 0, examples(figures, "acknowledged object lost")
    unsettled = "acknowledged object still in the pipeline at the end"
    assert not figures.objects["unsettled"], examples(figures, unsettled)
    settled = figures.objects["stored"] + figures.objects["failed, reason shown"]
    assert settled == figures.objects["acknowledged"]


def test_receiver_maps_every_error_to_a_status_with_a_comment(figures):
    kind = UNEXPECTED_STATUSES[0xC211]
    assert not figures.finding_counts[kind], examples(figures, kind)
    assert not figures.finding_counts["C-STORE refusal without ErrorComment"]


def test_frame_gate_grants_no_frame_without_a_token(figures):
    kind = "frame gate granted a frame without a token"
    assert not figures.finding_counts[kind], examples(figures, kind)


def test_every_reencoded_object_acknowledged_dcmdump_reads_whole(figures):
    kind = "re-encoded object acknowledged, dcmdump refuses it"
    assert not figures.finding_counts[kind], examples(figures, kind)
    assert figures.answers["re-encoded acknowledged, dcmdump reads"] > 0
    assert figures.answers["re-encoded refused, dcmdump refuses"] > 0  # rtplan_truncated


def test_every_restore_of_a_mutated_backup_is_refused_with_nothing_written(figures):
    found = {k: v for k, v in figures.findings.items() if k.startswith("restore:")}
    assert figures.restore_findings == 0, found
    assert figures.answers["restore refused (Error: line), nothing written"] > 0
