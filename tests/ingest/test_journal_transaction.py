"""The journal's transaction API: one serialized transaction per block, all or nothing."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from appliance import metrics
from appliance.db import Transactions
from appliance.ingest.header import describe
from appliance.ingest.journal import Journal
from appliance.security import audit

ADD = "INSERT INTO modalities (ae_title, created_at) VALUES (?, '2026-01-01')"


def _titles(journal: Journal) -> list[str]:
    return journal.read(lambda db: [r[0] for r in db.execute("SELECT ae_title FROM modalities")])


def test_a_block_commits_when_it_ends(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "app.db")
    with journal.transaction() as db:
        db.execute(ADD, ["CT_A"])
        db.execute(ADD, ["CT_B"])
    other = Journal(tmp_path / "app.db")  # another connection sees the commit
    assert sorted(_titles(other)) == ["CT_A", "CT_B"]


def test_a_block_that_raises_leaves_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "app.db")
    with pytest.raises(RuntimeError), journal.transaction() as db:
        db.execute(ADD, ["CT_A"])
        raise RuntimeError("halfway")
    assert _titles(journal) == []


def test_blocks_on_separate_connections_take_turns(tmp_path: Path) -> None:
    """Each thread has a connection of its own, as the receiver, worker and app do."""
    Journal(tmp_path / "app.db")

    def add(start: int) -> None:
        journal: Transactions = Journal(tmp_path / "app.db")
        for n in range(start, start + 50):
            with journal.transaction() as db:  # read, then write what was read
                count = db.execute("SELECT count(*) FROM modalities").fetchone()[0]
                db.execute(ADD, [f"AE{n}_{count}"])

    threads = [threading.Thread(target=add, args=(k * 50,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    titles = _titles(Journal(tmp_path / "app.db"))
    assert sorted(int(t.split("_")[1]) for t in titles) == list(range(200))  # no lost update


def test_a_received_object_is_journaled_whole_or_not_at_all(tmp_path: Path) -> None:
    """A failure after the instance row (here a trigger refusing the study row, as a full
    disk would) leaves no instance without its study."""
    journal = Journal(tmp_path / "app.db")
    journal.db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON studies BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    ds = Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.1", "1.2.3", "1.2.3.9"
    ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
    with pytest.raises(sqlite3.IntegrityError):
        journal.record_received(ds, describe(ds), "x.dcm", "dicom:CT_A", 10)
    count = journal.read(lambda db: db.execute("SELECT count(*) FROM instances").fetchone()[0])
    assert count == 0


def _count_a_store(db) -> None:
    metrics.add(db, {metrics.key("cstore_total", status="0x0000"): 1})


def _audit_a_held_object(db) -> None:
    audit.record(db, audit.OBJECT_HELD, username="dicom:CT_A", reason="test")


def _rows(journal: Journal, table: str) -> int:
    return journal.read(lambda db: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.mark.parametrize(
    ("write", "table"), [(_count_a_store, "metrics"), (_audit_a_held_object, "audit")]
)
def test_a_count_or_audit_row_written_in_a_block_rolls_back_with_it(
    tmp_path: Path, write, table: str
) -> None:
    """metrics.add and audit.record join the block they are called in (a SAVEPOINT): they
    used ``with db.conn:``, which committed the enclosing block there and then."""
    journal = Journal(tmp_path / "app.db")
    with pytest.raises(RuntimeError), journal.transaction() as db:
        db.execute(ADD, ["CT_A"])
        write(db)
        raise RuntimeError("after the write")
    assert (_titles(journal), _rows(journal, table)) == ([], 0)


def test_a_count_that_fails_in_a_block_undoes_only_itself(tmp_path: Path) -> None:
    """A caller that carries on after a failed count keeps the block's other writes
    (``with db.conn:`` rolled the whole enclosing block back)."""
    journal = Journal(tmp_path / "app.db")
    journal.db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON metrics BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    with journal.transaction() as db:
        db.execute(ADD, ["CT_A"])
        with pytest.raises(sqlite3.IntegrityError):
            _count_a_store(db)
        db.execute(ADD, ["CT_B"])
    assert sorted(_titles(Journal(tmp_path / "app.db"))) == ["CT_A", "CT_B"]
