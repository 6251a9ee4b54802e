"""``/api/metrics``: the appliance's numbers in Prometheus' text format (prometheus-client).

Counters come from the shared ``metrics`` table (:mod:`appliance.metrics`: every app
process, the worker and the receiver add to it), so a scrape answers the same whichever
app process nginx picks; gauges (queue, ingest backlog, free disk, backup age) are read
at scrape time. Open to administrators, and without a token to callers on this machine
(the address nginx passes, so a browser elsewhere still needs an admin token).
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from appliance import metrics
from appliance.backup.status import backup_age
from appliance.jobs.monitor import INGEST, QueueState
from appliance.web.auth import requires
from appliance.web.errors import Handler
from appliance.web.keys import DB, METRICS, SETTINGS
from appliance.web.queue import queue_state

log = logging.getLogger("neuronova.web")
routes = web.RouteTableDef()
PREFIX = "neuronova_"
# Counters of the metrics table: name -> (help, label names).
COUNTERS = {
    "http_requests_total": (
        "Requests answered, by route and status: the app's routes (their patterns), and "
        "the frames the frame gate approved (route frame_gate).",
        ("route", "status"),
    ),
    "frame_gate_handed_to_app_total": (
        "Frame requests the frame gate handed to the app, which counts them again by route.",
        (),
    ),
    "auth_failures_total": (
        "Failed logins and refused tokens, roles, CSRF headers and refresh tokens, by "
        "audit event and reason.",
        ("event", "reason"),
    ),
    "cstore_total": (
        "C-STORE requests answered by the DICOM receiver, by status and calling AE title.",
        ("status", "calling_ae"),
    ),
}


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer of the app by route pattern and status (a dict increment)."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status_code
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        labels = (("route", route), ("status", str(status)))
        request.app[METRICS].count("http_requests_total", labels)


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """Add this process's counts to the shared table every few seconds and at shutdown."""

    async def flush_now_and_then() -> None:
        while True:
            await asyncio.sleep(metrics.FLUSH_INTERVAL)
            try:
                app[METRICS].flush(app[DB])
            except sqlite3.Error:  # the database busy past its timeout: these counts are lost
                log.exception("could not add the request counts to the metrics table")

    task = asyncio.create_task(flush_now_and_then())
    yield
    task.cancel()
    app[METRICS].flush(app[DB])


@routes.get("/api/metrics")
@requires("admin", loopback=True)
async def scrape(request: web.Request) -> web.Response:
    """Every metric in the Prometheus text format."""
    app = request.app
    app[METRICS].flush(app[DB])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(app, await queue_state(app, failed_limit=0)))
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


class Collector:
    """The families of one scrape, read from the app's database, the queue monitor's
    state and the disk."""

    def __init__(self, app: web.Application, queue: QueueState) -> None:
        self.app = app
        self.queue = queue

    def collect(self) -> Iterator[Metric]:
        """Counters and the transcode histogram from the table, then the gauges."""
        found = metrics.read(self.app[DB])
        for name, (text, labels) in COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name, text, labels=labels)
            rows = found.get(name) or ([] if labels else [({}, 0.0)])  # unlabelled: 0 at first
            for values, value in rows:
                family.add_metric([values.get(label, "") for label in labels], value)
            yield family
        yield _histogram(found)
        yield from self._queue()
        yield from self._disk()
        age = backup_age(self.app[SETTINGS].layout)
        yield GaugeMetricFamily(
            PREFIX + "backup_age_seconds",
            "Seconds since the last successful backup finished; NaN when there was none.",
            value=math.nan if age is None else age,
        )

    def _queue(self) -> Iterator[Metric]:
        state = self.queue
        yield GaugeMetricFamily(
            PREFIX + "queue_pending_tasks",
            "Tasks waiting in the queue, every kind (NaN when the queue storage is unreachable).",
            value=math.nan if state.pending is None else state.pending,
        )
        tasks = GaugeMetricFamily(
            PREFIX + "queue_tasks",
            "Tasks by kind (ingest, previews, retention, backups) and state: pending, "
            "scheduled (a retry or delay waiting for its time), running.",
            labels=("kind", "state"),
        )
        for kind in state.kinds:
            for name in ("pending", "scheduled", "running"):
                value = getattr(kind, name)
                tasks.add_metric([kind.kind, name], math.nan if value is None else value)
        yield tasks
        ingest = state.kind(INGEST)
        states = GaugeMetricFamily(
            PREFIX + "ingest_objects",
            "Received objects not yet stored (received, processing) or failed, by state.",
            labels=("state",),
        )
        waiting = ingest.waiting or 0
        counts = (waiting - ingest.running, ingest.running, state.failed_total)
        for name, count in zip(("received", "processing", "failed"), counts, strict=True):
            states.add_metric([name], count)
        yield states
        yield GaugeMetricFamily(
            PREFIX + "ingest_oldest_waiting_seconds",
            "Age of the oldest object received but not yet stored (0 when none waits).",
            value=state.oldest_pending_age_s or 0.0,
        )

    def _disk(self) -> Iterator[Metric]:
        layout = self.app[SETTINGS].layout
        free = GaugeMetricFamily(
            PREFIX + "disk_free_bytes",
            "Free bytes on the file systems of the image store and the receiver's spool.",
            labels=("path",),
        )
        for name, path in (("images", layout.orthanc_dir), ("spool", layout.spool_dir)):
            free.add_metric([name], shutil.disk_usage(path).free)
        yield free


def _histogram(found: dict[str, list[tuple[dict[str, str], float]]]) -> Metric:
    """The transcode time histogram: per-bucket counts of the table made cumulative."""
    per_bucket = {
        float(labels["le"]): value for labels, value in found.get("transcode_seconds_bucket", [])
    }
    total, buckets = 0.0, []
    for le in (*metrics.TRANSCODE_BUCKETS, math.inf):
        total += per_bucket.get(float(le), 0.0)
        buckets.append(("+Inf" if le == math.inf else repr(float(le)), total))
    sums = found.get("transcode_seconds_sum", [])
    return HistogramMetricFamily(
        PREFIX + "transcode_seconds",
        "Time the worker took per stored object: read, transcode to HTJ2K, verify, store "
        "in Orthanc, prepare frames.",
        buckets=buckets,
        sum_value=sums[0][1] if sums else 0.0,
    )
