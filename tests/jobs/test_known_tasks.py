"""Tasks an older version queued under names this one does not register are skipped
with a warning (dropped by the worker, left by a monitor that only reads the queue):
Huey's consumer paused (up to 10 s) after each one it could not read."""

from __future__ import annotations

import datetime as dt
import logging

from huey import SqliteHuey

from appliance.config import Settings
from appliance.jobs import known_tasks
from appliance.jobs.queue import create_queue


def older_version(settings: Settings) -> SqliteHuey:
    """A Huey on the same queue file registering the task under its old name."""
    huey = SqliteHuey("neuronova", filename=str(settings.layout.queue_file), results=False)

    @huey.task(name="appliance.transcode.queue.write_images")
    def write_images(sop_uid: str, spool_path: str) -> None:
        """The old version's task."""

    huey.write_images = write_images  # type: ignore[attr-defined]
    return huey


def test_a_renamed_task_is_dropped_once_warned_and_the_next_one_runs(settings, caplog):
    queue = create_queue(settings)
    old = older_version(settings)
    for n in range(3):
        old.write_images(f"1.2.{n}", f"/spool/{n}.dcm")
    queue.enqueue_ingest("1.2.9", "/spool/9.dcm")  # ingest first: priority
    queue.enqueue_images("1.2.8", "/spool/8.dcm")
    known_tasks.skipped.clear()
    with caplog.at_level(logging.WARNING, logger=known_tasks.__name__):
        read = [queue.huey.dequeue() for _ in range(5)]
    names = [task.name if task else None for task in read]
    assert names == ["ingest_instance", None, None, None, "write_images"]
    [(name, count)] = known_tasks.skipped.items()  # the queue name: module and task name
    assert name.endswith("appliance.transcode.queue.write_images") and count == 3
    [warning] = caplog.records  # one line for the name, not one per task
    assert name in warning.getMessage() and "The worker drops such tasks" in warning.getMessage()
    assert "Traceback" not in caplog.text


def test_a_monitor_skips_a_renamed_task_and_leaves_it_for_the_worker(settings, caplog):
    """The queue monitor reads pending tasks without taking them: its warning must not
    say the task was dropped, and the worker still finds (and drops) it."""
    queue = create_queue(settings)
    older_version(settings).write_images("1.2.1", "/spool/1.dcm")
    known_tasks.skipped.clear()
    with caplog.at_level(logging.WARNING, logger=known_tasks.__name__):
        assert queue.huey.pending() == []
    assert queue.huey.pending_count() == 1  # still queued: a monitor only looks
    [warning] = caplog.records
    assert warning.getMessage().startswith("skipped a queued task of another version")
    assert queue.huey.dequeue() is None and queue.huey.pending_count() == 0  # the worker


def test_the_schedule_skips_renamed_tasks(settings, caplog):
    queue = create_queue(settings)
    old = older_version(settings)
    soon = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(minutes=1)
    for huey, task in ((old, old.write_images.s("1.2.3", "/spool/3.dcm")),
                       (queue.huey, queue.ingest.s("1.2.4", "/spool/4.dcm"))):  # fmt: skip
        task.eta = soon  # as the consumer schedules a retry
        huey.add_schedule(task)
    with caplog.at_level(logging.ERROR):
        due = queue.huey.read_schedule(soon + dt.timedelta(minutes=1))
    assert [task.name for task in due] == ["ingest_instance"]
    assert not caplog.records  # Huey logged "Unable to deserialize task." with a traceback
