"""Fixtures of the browser tests (Chromium itself is in tests/conftest.py: sign-on uses it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.synthetic import make_slices, write_series
from tests.support.browsing import ARTIFACTS, add_radiologist, send_as_patient
from tests.support.running import wait_stored


@pytest.fixture(scope="module", autouse=True)
def artifacts() -> Path:
    """The folder for screenshots and facts, made once per module."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def study(appliance, tmp_path_factory, request):
    """(series, slices): a CT series of the module's ``SLICES`` sent with storescu from its
    ``CALLING_AE`` as its own patient (``PATIENT_ID``, ``PATIENT_NAME``) and stored as
    HTJ2K; the module's ``USER`` is a radiologist with its ``PASSWORD``."""
    module = request.module
    add_radiologist(appliance, module.USER, module.PASSWORD)
    slices = make_slices(module.SLICES)
    series = write_series(tmp_path_factory.mktemp(module.CALLING_AE.lower()), slices)
    patient = (module.PATIENT_ID, module.PATIENT_NAME)
    send_as_patient(appliance, series.files, patient, module.CALLING_AE)
    wait_stored(appliance, series.sop_uids)
    return series, slices
