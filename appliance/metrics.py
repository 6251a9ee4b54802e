"""Counters the appliance's processes share through the app database (``/api/metrics``).

Two app processes, the worker and the receiver each see part of what happens, and a
Prometheus scrape reaches one app process only. So every count is kept in the table
``metrics`` (name, labels, value), which every process adds to and the scraped process
reads whole: the answer is the same whichever app process it reaches, counters survive
restarts (no false resets), and it works across the cloud profile's containers, which
share the home volume but not a process tree or PID namespace (prometheus-client's
multiprocess mode keys its files by PID, which repeats across containers).

Rare events (a C-STORE, a transcode, an authentication failure) are added at once, in
their own small transaction. The app's per-request counts are held in memory
(:class:`Tally`: a dict increment per request, a plain int per frame in the frame gate)
and added every :data:`FLUSH_INTERVAL` seconds and before each scrape.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping

import sqlite_utils

from appliance.db import transaction

FLUSH_INTERVAL = 5.0
# Transcode time buckets (seconds): a CT slice takes about 25 ms, a large multi-frame
# object seconds.
TRANSCODE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
Key = tuple[str, str]  # (name, labels as canonical JSON)
# Distinct values a label taken from what a client sends (a calling AE title) may have
# in one counter; later ones are counted under OTHER, so the table and a scrape stay
# bounded whatever callers send.
MAX_CLIENT_LABELS = 50
OTHER = "other"

_ADD = (
    "INSERT INTO metrics (name, labels, value) VALUES (?, ?, ?) "
    "ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value"
)


def key(name: str, **labels: str) -> Key:
    """The table key of counter ``name`` with ``labels``."""
    return name, json.dumps(labels, sort_keys=True)


def client_label(db: sqlite_utils.Database, name: str, label: str, value: str) -> str:
    """``value`` as counter ``name``'s ``label``, or :data:`OTHER` once the counter has
    :data:`MAX_CLIENT_LABELS` distinct values of it and ``value`` is not among them."""
    path = f"$.{label}"
    known = db.execute(
        "SELECT 1 FROM metrics WHERE name = ? AND json_extract(labels, ?) = ? LIMIT 1",
        [name, path, value],
    ).fetchone()
    if known:
        return value
    distinct = db.execute(
        "SELECT COUNT(DISTINCT json_extract(labels, ?)) FROM metrics WHERE name = ?",
        [path, name],
    ).fetchone()[0]
    return value if distinct < MAX_CLIENT_LABELS else OTHER


def add(db: sqlite_utils.Database, amounts: Mapping[Key, float]) -> None:
    """Add ``amounts`` to their counters, in one transaction (or in the one already open
    on ``db``)."""
    if amounts:
        with transaction(db):
            db.conn.executemany(_ADD, [(n, labels, v) for (n, labels), v in amounts.items()])


def observation(name: str, value: float, buckets: Iterable[float]) -> dict[Key, float]:
    """The amounts that record ``value`` in histogram ``name``: its own bucket (counts are
    kept per bucket, made cumulative when read) and the sum."""
    le = next((b for b in buckets if value <= b), float("inf"))
    return {key(f"{name}_bucket", le=repr(float(le))): 1, key(f"{name}_sum"): value}


def read(db: sqlite_utils.Database) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every counter: name -> [(labels, value)]."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in db.execute("SELECT name, labels, value FROM metrics"):
        found.setdefault(name, []).append((json.loads(labels), value))
    return found


class Tally:
    """Counts held in memory and added to the table by :meth:`flush`.

    ``count`` takes a lock (threads may share a tally); ``watch`` registers a plain int a
    hot path increments without any call, of which each flush adds what is new.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self._watched: list[tuple[Key, Callable[[], int], list[int]]] = []

    def count(self, name: str, labels: tuple[tuple[str, str], ...]) -> None:
        """Add one to ``name`` with ``labels`` ((name, value) pairs); encoded at flush."""
        k = (name, labels)
        with self._lock:
            self._pending[k] = self._pending.get(k, 0) + 1

    def watch(self, name: str, labels: dict[str, str], total: Callable[[], int]) -> None:
        """Add ``total()``'s growth to ``name`` at every flush."""
        self._watched.append((key(name, **labels), total, [0]))

    def flush(self, db: sqlite_utils.Database) -> None:
        """Add everything counted since the last flush."""
        with self._lock:
            counted, self._pending = self._pending, {}
            pending: dict[Key, float] = {}
            for (name, labels), n in counted.items():
                k = key(name, **dict(labels))
                pending[k] = pending.get(k, 0) + n
            for k, total, seen in self._watched:
                now = total()
                if now != seen[0]:
                    pending[k] = pending.get(k, 0) + now - seen[0]
                    seen[0] = now
        add(db, pending)
