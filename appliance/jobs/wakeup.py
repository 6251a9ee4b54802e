"""Waking the queue worker when a task is queued, instead of having it poll.

The SQLite queue has no way to block until a row arrives, and polling it costs either
CPU or latency (a poll every 0.25 s made the first object of a study wait up to 0.25 s,
and so every object the worker had caught up with). So whoever queues a task sends an
empty datagram to the worker's socket, as Huey's Postgres storage sends a NOTIFY; the
worker waits on that socket with a timeout and looks at the queue again when woken or
when the timeout passes (a datagram lost because nobody listened yet, or because the
socket's queue was full while the worker was busy, costs at most the timeout).

The socket is a Linux abstract one (no file, gone with the process), named after the
queue file, so every process of one data home finds it and no other home's. One worker
process of a home listens; another one that finds the name taken polls at the timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import select
import socket
import threading

log = logging.getLogger("neuronova.worker")


def address(queue_file: str) -> bytes:
    """The abstract socket address of the worker of the queue in ``queue_file``."""
    digest = hashlib.sha256(os.path.realpath(queue_file).encode()).hexdigest()[:32]
    return b"\0neuronova-queue-" + digest.encode()


class Wakeup:
    """Both ends: :meth:`notify` (any process that queues) and :meth:`wait` (the worker)."""

    def __init__(self, queue_file: str) -> None:
        self.address = address(queue_file)
        self._lock = threading.Lock()
        self._sender: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._listening = False

    def notify(self) -> None:
        """Tell the worker something was queued; never blocks, never fails."""
        try:
            with self._lock:
                if self._sender is None:
                    self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.sendto(b"", socket.MSG_DONTWAIT, self.address)
        except OSError:  # no worker listening, or its queue is full: it will look anyway
            pass

    def listen(self) -> bool:
        """Take the worker's address (once); whether this process listens on it.

        Call it before looking at the queue, so that a task queued after the look
        leaves a datagram for :meth:`wait`.
        """
        with self._lock:
            if not self._listening and self._listener is None:
                self._listening = True
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                try:
                    listener.bind(self.address)
                except OSError as exc:
                    listener.close()
                    log.info("another worker listens for this queue (%s): polling instead", exc)
                    return False
                listener.setblocking(False)
                self._listener = listener
        return self._listener is not None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a datagram; whether one came. Without the
        address (see :meth:`listen`) this only sleeps.

        One datagram is taken per wake (one per task queued), so that two tasks queued at
        once wake two waiting threads; a thread woken with another for one datagram looks
        at the queue for nothing, which costs one SELECT.
        """
        listener = self._listener
        if listener is None:
            threading.Event().wait(timeout)
            return False
        readable, _, _ = select.select([listener], [], [], timeout)
        if not readable:
            return False
        with contextlib.suppress(BlockingIOError):  # another waiting thread took it
            listener.recv(16)
        return True

    def close(self) -> None:
        """Close both ends (the address is free again)."""
        with self._lock:
            for sock in (self._sender, self._listener):
                if sock is not None:
                    sock.close()
            self._sender = self._listener = None
            self._listening = False
