"""The overwrite policy at unit level (a real home and database, no appliance running):
what each policy holds back, and the admin API that lists, accepts and discards it."""

from __future__ import annotations

import re
import shutil
import sqlite3

import pydicom
import pytest
from click.testing import CliRunner

from appliance.cli import cli as neuronova
from appliance.config import ConfigError, load_settings
from appliance.db import open_database
from appliance.ingest.intake import HeldError, Ingest
from appliance.jobs.queue import create_queue
from appliance.web.app import create_app
from tests.support.auth import bearer
from tests.support.samples import TEST_FILES


def receive(ingest: Ingest, ds: pydicom.Dataset, source: str, policy: str):
    """What the receiver does with a data set pynetdicom wrote to ``incoming/``."""
    path = ingest.spool.incoming / f"{pydicom.uid.generate_uid()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ingest.receive(path, ds, source, policy)


def ct(**attributes: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("policy", "same_source", "other_source", "other_patient"),
    [
        ("never", "held", "held", "held"),
        ("same-source", "replaced", "held", "held"),
        ("always", "replaced", "replaced", "replaced"),
    ],
)
def test_what_each_policy_holds(settings, policy, same_source, other_source, other_patient):
    ingest = Ingest(settings, create_queue(settings))
    assert receive(ingest, ct(), "dicom:CT_A", policy) is None

    def outcome(ds: pydicom.Dataset, source: str) -> str:
        return "held" if receive(ingest, ds, source, policy) else "replaced"

    assert outcome(ct(), "dicom:CT_A") == same_source
    assert outcome(ct(), "dicom:CT_B") == other_source
    new_sop = pydicom.uid.generate_uid()
    assert outcome(ct(SOPInstanceUID=new_sop, PatientID="OTHER"), "dicom:CT_A") == other_patient
    held = ingest.journal.held()
    assert len(held) == [same_source, other_source, other_patient].count("held")
    assert all(settings.layout.spool_file(row["spool_path"]).exists() for row in held)


def test_a_held_object_survives_recovery_untouched(settings):
    ingest = Ingest(settings, create_queue(settings))
    receive(ingest, ct(), "dicom:CT_A", "same-source")
    refusal = receive(ingest, ct(), "dicom:CT_B", "same-source")
    assert refusal.comment == "Refused: the instance is archived from another source"
    name = ingest.journal.held()[0]["spool_path"]
    ingest.recover()
    assert settings.layout.spool_file(name).exists()
    assert ingest.journal.held()[0]["spool_path"] == name


def test_an_unknown_policy_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="overwrite must be one of never, same-source, always"):
        load_settings(tmp_path, {"dicom.overwrite": "sometimes"}, environ={})


async def test_admins_list_accept_and_discard_held_objects(aiohttp_client, settings):
    db = open_database(settings.layout.database_file)
    ingest = Ingest(settings, create_queue(settings))
    receive(ingest, ct(), "dicom:CT_A", "same-source")
    receive(ingest, ct(), "dicom:CT_B", "same-source")
    receive(ingest, ct(PatientID="OTHER"), "dicom:CT_A", "same-source")
    client = await aiohttp_client(create_app(settings))
    admin = await bearer(client, "boss")
    assert (await client.get("/api/admin/held", headers=await bearer(client, "rad"))).status == 403
    items = (await (await client.get("/api/admin/held", headers=admin)).json())["items"]
    assert [i["source"] for i in items] == ["dicom:CT_B", "dicom:CT_A"]
    first, second = items[0]["id"], items[1]["id"]
    accepted = await client.post(f"/api/admin/held/{first}/accept", headers=admin)
    assert accepted.status == 200 and (await accepted.json())["state"] == "received"
    row = db["instances"].get(items[0]["sop_uid"])
    assert row["source"] == "dicom:CT_B" and row["state"] == "received"
    again = await client.post(f"/api/admin/held/{first}/accept", headers=admin)
    assert again.status == 404 and f"no held object {first}" in (await again.json())["message"]
    assert (await client.delete(f"/api/admin/held/{second}", headers=admin)).status == 204
    assert not settings.layout.spool_file(items[1]["spool_path"]).exists()
    assert (await (await client.get("/api/admin/held", headers=admin)).json())["items"] == []
    assert db["studies"].get(row["study_uid"])["patient_id"] != "OTHER"
    db.close()


def test_a_held_object_whose_file_is_gone_is_a_clear_error(settings):
    ingest = Ingest(settings, create_queue(settings))
    receive(ingest, ct(), "dicom:CT_A", "never")
    receive(ingest, ct(), "dicom:CT_A", "never")
    row = ingest.journal.held()[0]
    shutil.move(settings.layout.spool_file(row["spool_path"]), settings.home / "elsewhere.dcm")
    with pytest.raises(HeldError, match=f"the file of held object {row['id']} is gone"):
        ingest.release_held(row["id"])


def test_accepting_a_held_object_journals_it_and_forgets_it_together(settings):
    """A failure between the two steps (here a trigger refusing the held row's removal, as a
    full disk would) leaves the object held and the archived copy journaled as it was:
    never journaled and still held."""
    ingest = Ingest(settings, create_queue(settings))
    receive(ingest, ct(), "dicom:CT_A", "same-source")
    receive(ingest, ct(), "dicom:CT_B", "same-source")
    held = ingest.journal.held()[0]
    ingest.journal.db.execute(
        "CREATE TRIGGER refuse BEFORE DELETE ON held BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        ingest.release_held(held["id"])
    archived = ingest.journal.db["instances"].get(held["sop_uid"])
    assert (archived["source"], len(ingest.journal.held())) == ("dicom:CT_A", 1)


def test_an_import_is_held_by_the_policy_like_a_modality(settings, tmp_path):
    """`neuronova import` goes through the same overwrite policy as C-STORE and STOW: a
    CD cannot replace what a modality sent, nor rename an archived study's patient; an
    import run again over its own objects still goes through (same source)."""
    cli = CliRunner()
    ingest = Ingest(settings, create_queue(settings))
    receive(ingest, ct(), "dicom:CT_A", "same-source")
    cd = tmp_path / "cd"
    cd.mkdir()
    ct().save_as(cd / "same.dcm", enforce_file_format=True)
    renamed = ct(SOPInstanceUID=pydicom.uid.generate_uid(), PatientID="SOMEONE-ELSE")
    renamed.save_as(cd / "renamed.dcm", enforce_file_format=True)
    own = ct(SOPInstanceUID=pydicom.uid.generate_uid())
    own.save_as(cd / "own.dcm", enforce_file_format=True)
    home = ["--home", str(settings.home), "--no-wait"]

    first = cli.invoke(neuronova, ["import", str(cd), *home])
    assert first.exit_code == 1, first.output
    assert re.search(r"held for an admin +2 ", first.output), first.output
    assert "same.dcm: SOP Instance" in first.output and "archived from dicom:CT_A" in first.output
    assert "renamed.dcm: study" in first.output and "neuronova held list" in first.output
    held = {row["sop_uid"] for row in ingest.journal.held()}
    assert held == {str(ct().SOPInstanceUID), str(renamed.SOPInstanceUID)}
    again = cli.invoke(neuronova, ["import", str(cd / "own.dcm"), *home])
    assert again.exit_code == 0, again.output
    assert ingest.journal.db["instances"].get(str(own.SOPInstanceUID))["source"] == "import"
