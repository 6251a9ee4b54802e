"""The queue worker takes new work up when it is queued, not at its next poll
(appliance.jobs.wakeup): Huey's real consumer on the real SQLite queue, the task
queued by another process as the receiver queues it."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest
from huey import Huey

from appliance.config import Settings, load_settings
from appliance.jobs.queue import create_queue
from appliance.jobs.wakeup import Wakeup
from tests.support.waiting import wait_for

AN_HOUR = 3600.0


def add_touch(huey: Huey):
    """A task that creates the file it is given (registered in both processes)."""

    @huey.task(name="touch")
    def touch(path: str) -> None:
        Path(path).touch()

    return touch


def queue_from_another_process(home: str, path: str) -> None:
    """What the receiver does: build the queue of the home, queue a task, exit."""
    settings = load_settings(Path(home), {}, environ={})
    add_touch(create_queue(settings).huey)(path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(tmp_path / "home", {}, environ={})


@pytest.fixture
def consumer(settings: Settings) -> Iterator[Huey]:
    """A consumer with two worker threads whose wait for new work, unwoken, lasts an hour."""
    huey = create_queue(settings).huey
    add_touch(huey)
    huey.storage.read_timeout = AN_HOUR
    running = huey.create_consumer(workers=2, worker_type="thread", periodic=False)
    running.start()
    yield huey
    running.stop_flag.set()
    for _ in running.worker_threads:  # wake each waiting worker, so that it sees the stop
        huey.storage.wakeup.notify()
    for _, thread in running.worker_threads:
        thread.join(30)
        assert not thread.is_alive()
    running.stop(graceful=True)


def test_work_queued_by_another_process_wakes_the_worker(consumer, settings, tmp_path):
    """Each task is done long before the hour a poll would wait: the worker is woken."""
    context = multiprocessing.get_context("spawn")
    for n in range(3):
        done = tmp_path / f"done-{n}"
        sender = context.Process(target=queue_from_another_process,
                                 args=(str(settings.home), str(done)))  # fmt: skip
        sender.start()
        sender.join(60)
        assert sender.exitcode == 0
        wait_for(done.exists, 60, f"task {n}, queued while the workers waited, to be done")


def test_queueing_never_waits_for_a_worker(tmp_path):
    """With no worker listening (stopped, or its socket's queue full), queueing goes on."""
    wakeup = Wakeup(str(tmp_path / "queue.db"))
    for _ in range(1000):
        wakeup.notify()
    listening = Wakeup(str(tmp_path / "queue.db"))
    assert listening.listen()
    for _ in range(1000):  # far more than the socket queues
        wakeup.notify()
    assert listening.wait(AN_HOUR)
    assert not Wakeup(str(tmp_path / "queue.db")).listen()  # one listener per queue
    listening.close()
    wakeup.close()
