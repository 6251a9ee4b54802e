"""The queue consumer process: runs tasks and writes a heartbeat the health check reads."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path

from appliance.config import Settings
from appliance.ingest.intake import Ingest
from appliance.jobs.activity import TaskActivity, forget_stopped_workers
from appliance.jobs.queue import Queue, create_queue
from appliance.jobs.work import worker_work
from appliance.transcode.pipeline import warm_up_codec

log = logging.getLogger("neuronova.worker")
HEARTBEAT_INTERVAL = 2.0


def _beat(path: Path, activity: TaskActivity, stop: threading.Event) -> None:
    while not stop.is_set():
        path.touch()
        with contextlib.suppress(OSError):  # the counts are a display; the heartbeat matters
            activity.write()
        stop.wait(HEARTBEAT_INTERVAL)


def recover_beside_others(settings: Settings, queue: Queue) -> int:
    """Re-queue what an earlier stop left over, then join the running workers.

    Several workers may share a home (worker containers of the cloud profile). Each holds
    a shared lock on ``run/workers.lock`` while it runs; a worker that can take the lock
    exclusively is alone, so objects left ``processing`` were interrupted and go back to
    the queue. Beside running workers they are theirs and stay claimed. The lock is
    downgraded only after recovery, so a worker starting meanwhile waits for it. Returns
    the lock's descriptor (held until the process ends).
    """
    fd = os.open(settings.layout.workers_lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except BlockingIOError:
        alone = False
        log.info("other workers are running: their claimed objects stay theirs")
    Ingest(settings, queue=queue).recover(reset_claims=alone)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


WORKER_NICENESS = 10


def serve(settings: Settings) -> None:
    """Run the consumer with ``settings.queue.workers`` threads until SIGTERM or SIGINT.

    The worker runs at a lower CPU priority than the receiver and the web app:
    acknowledging modalities and serving viewers come first, transcoding uses what is
    left (on 2 cores it would otherwise slow the C-STORE phase down by half).
    """
    os.nice(WORKER_NICENESS)
    warm_up_codec()  # before any worker thread runs the codec (see its docstring)
    queue = create_queue(settings, work=worker_work(settings))
    recover_beside_others(settings, queue)
    queue.study_details()  # older studies' QIDO details, once now (then hourly)
    huey = queue.huey
    consumer = huey.create_consumer(
        workers=settings.queue.workers,
        worker_type="thread",
        periodic=True,
        check_worker_health=True,
    )  # an idle worker waits to be woken (both queues' dequeue blocks), it does not poll
    stop = threading.Event()
    layout = settings.layout
    forget_stopped_workers(layout)
    activity = TaskActivity.for_this_process(layout)
    activity.attach(huey)
    beat = (layout.worker_heartbeat_file, activity, stop)
    beating = threading.Thread(target=_beat, args=beat, daemon=True, name="heartbeat")
    beating.start()
    backend = "Redis" if settings.queue.redis_url else "SQLite"
    log.info("queue worker started: %d workers, %s backend", settings.queue.workers, backend)
    try:
        consumer.run()
    finally:
        stop.set()
        beating.join(HEARTBEAT_INTERVAL)
        activity.remove()
