"""A short, seeded fuzz run against the real appliance (``bench/fuzz.py``).

Mutated Part 10 objects by C-STORE and STOW-RS, mutated paths and queries through nginx,
raw request heads to the frame gate. ``bench/fuzz.py`` with its defaults (10 minutes)
writes ``bench/results/robustness.md``; this runs the same inputs for about a minute
(``NEURONOVA_FUZZ_SECONDS``, ``NEURONOVA_FUZZ_INPUTS`` change the bounds).
"""

from __future__ import annotations

import os
import secrets

import pytest
from conftest import make_appliance

from bench.fuzz import UNEXPECTED_STATUSES, Budget, Figures, fuzz, technologist_token

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("NEURONOVA_FUZZ_SECONDS", "75"))
INPUTS = int(os.environ.get("NEURONOVA_FUZZ_INPUTS", "1500"))
SEED = 7


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> Figures:
    """The figures of one bounded run on an appliance of its own."""
    appliance = make_appliance(tmp_path_factory.mktemp("fuzz")).start()
    try:
        token = technologist_token(appliance.settings, secrets.token_urlsafe(18))
        return fuzz(appliance.settings, token, Budget(INPUTS, SECONDS), SEED)
    finally:
        appliance.stop()


def examples(figures: Figures, kind: str) -> str:
    return "\n".join(figures.findings.get(kind, []))


def test_the_run_tried_every_kind_of_input(figures):
    for kind in ("objects by C-STORE", "objects by STOW-RS", "requests through nginx",
                 "raw requests to the frame gate"):  # fmt: skip
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
