"""An incremental backup reads of the previous manifest only the parts that changed
(:mod:`appliance.backup.incremental`), and its chain ends with the manifest a full run makes.

A real Orthanc on an initialised home, instances stored as the pipeline stores them
(``tests/backup/test_backup_incremental.py``); manifests cut in small parts (about 4
entries each) so that a snapshot reading them all would show.
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from appliance.backup import frames_changes, home_files, parts
from appliance.backup.manifest import backup_key
from appliance.backup.repository import Repository
from appliance.config import Settings
from appliance.store.frame_files import remove_study_files
from appliance.store.orthanc import OrthancStore
from tests.backup.test_backup_incremental import (
    _next_second,
    _part10,
    _same_content,
    backup,
    ingest,
    manifest,
    settings,
    study,
)

__all__ = ["settings"]  # the fixture


def _parts_size(dest: Path, settings: Settings) -> int:
    """Bytes of the newest snapshot's parts (what reading its manifest whole reads)."""
    top = Repository(dest, backup_key(settings.layout)).latest_top()
    assert top is not None
    return sum(ref["size"] for refs in top["parts"].values() for ref in refs)


def test_a_chain_of_changed_parts_ends_as_a_full_run(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parts, "AVERAGE", 4)
    # as in test_the_same_new_work_costs_the_same_at_n_and_2n: nothing looked at twice
    monkeypatch.setattr(home_files, "SETTLE_NS", 0)
    monkeypatch.setattr(frames_changes, "MARGIN", timedelta(0))
    studies = [study(settings, 5, seed=seed) for seed in range(1, 13)]
    chain = tmp_path / "chain"
    _next_second()
    backup(settings, chain)
    for day in range(2):
        _next_second()
        study(settings, 3, seed=10 + day)  # a new study
        *_ids, sop_uid = studies[day][0]
        ds = pydicom.dcmread(io.BytesIO(OrthancStore(settings).fetch(sop_uid)))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ingest(settings, ds, _part10(ds))  # one more instance in a series backed up
        remove_study_files(settings.layout.frames_dir, studies[2 + day][0][1])  # frames gone
        (settings.home / f"note-{day}.txt").write_text("a file of the home's own")
        whole = _parts_size(chain, settings)
        result, calls = backup(settings, chain)
        assert result.work.orthanc_listing == "" and not result.work.full_walk
        assert result.work.orthanc_asked == 4
        assert 0 < result.work.manifest_read < whole / 2, (result.work, whole)
        assert calls["total"] <= 4 + 8, calls
    full, _calls = backup(settings, tmp_path / "full")
    assert full.work.full_walk and full.instances == 12 * 5 + 2 * 4
    chained = manifest(settings, chain)
    _same_content(chained, manifest(settings, tmp_path / "full"))
    assert chained["studies"] == manifest(settings, tmp_path / "full")["studies"]
