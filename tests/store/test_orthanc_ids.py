"""Reading a stored instance back from Orthanc by the id its PatientID and UIDs make
(appliance.store.orthanc.instance_id): one request whatever the archive holds, where
``/tools/lookup`` by UID grows with it; the look-up stays the fallback."""

from __future__ import annotations

from pathlib import Path

import pydicom

from appliance.ingest.journal import Journal
from appliance.store.orthanc import OrthancStore, instance_id
from bench.counting_proxy import CountingProxy
from bench.synthetic import make_slices, write_series
from tests.support.running import storescu, wait_stored


def test_orthanc_names_instances_by_the_computed_id(appliance, tmp_path: Path) -> None:
    series = write_series(tmp_path, make_slices(2))
    assert storescu(appliance, series.files).returncode == 0
    wait_stored(appliance, series.sop_uids)
    patient_id = str(pydicom.dcmread(series.files[0], stop_before_pixels=True).PatientID)
    store = OrthancStore(appliance.settings)
    for sop_uid in series.sop_uids:
        ids = store.lookup_ids(sop_uid)
        assert ids == [instance_id(patient_id, series.study_uid, series.series_uid, sop_uid)]
    keys = (patient_id, series.study_uid, series.series_uid)
    assert store.fetch(series.sop_uids[0], keys) == store.fetch(series.sop_uids[0])
    assert Journal(appliance.settings.layout.database_file).orthanc_keys(series.sop_uids[0]) == keys


def test_a_fetch_by_keys_asks_once_and_falls_back_to_the_look_up(appliance, tmp_path) -> None:
    series = write_series(tmp_path, make_slices(1))
    assert storescu(appliance, series.files).returncode == 0
    wait_stored(appliance, series.sop_uids)
    (sop_uid,) = series.sop_uids
    patient_id = str(pydicom.dcmread(series.files[0], stop_before_pixels=True).PatientID)
    settings = appliance.settings
    with CountingProxy(settings.internal.orthanc_port) as proxy:
        store = OrthancStore(settings.with_values({"internal.orthanc_port": proxy.port}))
        data = store.fetch(sop_uid, (patient_id, series.study_uid, series.series_uid))
        assert data is not None and proxy.summary()["by_path"] == {"GET /instances": 1}
        proxy.counts.clear()
        again = store.fetch(sop_uid, ("another patient", series.study_uid, series.series_uid))
        assert again == data
        assert proxy.summary()["by_path"] == {"GET /instances": 2, "POST /tools": 1}
