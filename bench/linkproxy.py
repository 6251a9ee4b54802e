"""A network link emulated at the TCP level: a shaping proxy for the viewer bench.

Usage: ``python -m bench.linkproxy --link clinic-100m --to 127.0.0.1:8443 [--port 0]
[--netns NAME]`` (prints ``listening on 127.0.0.1:PORT`` once it accepts connections).
With ``--netns`` it listens on the loopback of that network namespace (the browser's, see
bench/viewer.py) and relays to ``--to`` in its own; ``--link loopback`` relays unshaped.

Each TCP connection the browser opens is accepted on loopback and relayed to the
appliance's nginx; each direction of it goes through a :class:`Pipe` that behaves like one
direction of a link: a byte leaves the bottleneck at the link's rate, one after another
(the serialisation of every connection of the proxy shares that direction's rate, as on
one real link), and arrives half the round-trip time later. What the link holds (the bytes
in flight plus a bottleneck queue) is bounded: when it is full the proxy stops reading, and
TCP's flow control makes the sender wait, so a fast nginx cannot queue a whole study in
the proxy. A new connection waits one round trip before its first byte moves (the TCP
handshake). TLS, HTTP/2 multiplexing and the browser's connection limits pass through
untouched, so they cost round trips and share the rate as they would on a real link.

Not emulated: loss, jitter, TCP slow start on the emulated path (loopback's own TCP sees
no loss and grows its window at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass

CHUNK = 16 * 1024  # bytes read at a time: the link's granularity
LOOPBACK = "127.0.0.1"
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Link:
    """A symmetric link: ``rate_bps`` each way (0: unlimited), ``rtt_s`` round trip, a
    bottleneck queue."""

    name: str
    rate_bps: float
    rtt_s: float
    queue_bytes: int = 256 * 1024

    @property
    def delay_s(self) -> float:
        """One-way propagation delay."""
        return self.rtt_s / 2

    @property
    def capacity_bytes(self) -> int:
        """What one direction holds at most: bytes in flight (rate x delay) plus the queue."""
        return int(self.rate_bps / 8 * self.delay_s) + self.queue_bytes

    def describe(self) -> str:
        if not self.rate_bps:
            return "unshaped relay"
        rate = (f"{self.rate_bps / 1e9:g} Gbit/s" if self.rate_bps >= 1e9
                else f"{self.rate_bps / 1e6:g} Mbit/s")  # fmt: skip
        return f"{rate}, {self.rtt_s * 1e3:g} ms RTT"


UNSHAPED = Link("loopback", 0.0, 0.0, queue_bytes=4 * 1024 * 1024)
LINKS: dict[str, Link] = {
    link.name: link
    for link in (
        Link("lan-1g", 1e9, 0.001),
        Link("clinic-100m", 100e6, 0.020),
        Link("remote-20m", 20e6, 0.040),
    )
}


class Pipe:
    """One direction of the link, shared by every connection through the proxy."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._free_at = 0.0  # when the bottleneck has sent everything queued so far
        self._held = 0  # bytes read and not yet delivered, over all connections
        self._room = asyncio.Condition()

    @property
    def held(self) -> int:
        """Bytes the link holds now: in flight and queued, not yet delivered."""
        return self._held

    def schedule(self, size: int) -> float:
        """When ``size`` bytes read now arrive at the far end (monotonic seconds)."""
        now = time.monotonic()
        if not self.link.rate_bps:
            return now
        self._free_at = max(now, self._free_at) + size * 8 / self.link.rate_bps
        return self._free_at + self.link.delay_s

    async def admit(self, size: int) -> None:
        """Wait until the link can hold ``size`` more bytes, then count them in."""
        async with self._room:
            await self._room.wait_for(
                lambda: self._held == 0 or self._held + size <= self.link.capacity_bytes
            )
            self._held += size

    async def release(self, size: int) -> None:
        async with self._room:
            self._held -= size
            self._room.notify_all()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer`` through the link until end of stream."""
        in_flight: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        done = False

        async def deliver() -> None:
            try:
                while in_flight or not done:
                    if not in_flight:
                        arrived.clear()
                        await arrived.wait()
                        continue
                    at, data = in_flight[0]
                    await asyncio.sleep(max(0.0, at - time.monotonic()))
                    writer.write(data)
                    await writer.drain()
                    in_flight.popleft()
                    await self.release(len(data))
                if writer.can_write_eof():
                    writer.write_eof()
            finally:  # a closed far end: what was on the way leaves the link
                await self.release(sum(len(data) for _, data in in_flight))
                in_flight.clear()

        delivering = asyncio.create_task(deliver())
        # A far end that closed ends the delivery with an error: the relay ends, no report.
        delivering.add_done_callback(lambda task: task.cancelled() or task.exception())
        try:
            while not delivering.done() and (data := await reader.read(CHUNK)):
                await self.admit(len(data))
                in_flight.append((self.schedule(len(data)), data))
                arrived.set()
        finally:
            done = True
            arrived.set()
            if delivering.done():  # read after the far end closed: never delivered
                await self.release(sum(len(data) for _, data in in_flight))
        await delivering


class LinkProxy:
    """Accepts on ``127.0.0.1:port`` and relays each connection to ``target`` over ``link``."""

    def __init__(self, link: Link, target: tuple[str, int]) -> None:
        self.link = link
        self.target = target
        self.up, self.down = Pipe(link), Pipe(link)
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0, netns: str | None = None) -> int:
        """Listen (on the loopback of network namespace ``netns``, if given); the port."""
        listening = listening_socket(port, netns)
        self._server = await asyncio.start_server(self._serve, sock=listening)
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.link.rtt_s:
            await asyncio.sleep(self.link.rtt_s)  # SYN, SYN-ACK: the client's first byte waits
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(
                self.up.relay(client_r, server_w), self.down.relay(server_r, client_w)
            )
        except (ConnectionError, OSError):
            pass
        finally:
            for writer in (client_w, server_w):
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()


def listening_socket(port: int, netns: str | None) -> socket.socket:
    """A socket listening on 127.0.0.1:``port``; in network namespace ``netns`` if given
    (this thread enters it for the socket's creation only: the relayed connections are
    made from this process's own namespace)."""
    if netns is None:
        return socket.create_server((LOOPBACK, port))
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{netns}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"cannot enter network namespace {netns}")
        try:
            return socket.create_server((LOOPBACK, port))
        finally:
            if libc.setns(own.fileno(), CLONE_NEWNET) != 0:  # relaying from there: stop
                print(f"cannot return to the own network namespace: errno {ctypes.get_errno()}",
                      file=sys.stderr)  # fmt: skip
                os._exit(1)


async def serve(link: Link, target: tuple[str, int], port: int, netns: str | None) -> None:
    """Run a proxy until cancelled, saying where it listens on stdout."""
    proxy = LinkProxy(link, target)
    bound = await proxy.start(port, netns)
    print(f"listening on {LOOPBACK}:{bound} ({link.name}: {link.describe()})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link", choices=[UNSHAPED.name, *LINKS], required=True)
    parser.add_argument("--to", required=True, metavar="HOST:PORT",
                        help="where to relay (loopback)")  # fmt: skip
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--netns", help="listen in this network namespace (/run/netns/NAME)")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    if host not in (LOOPBACK, "localhost"):
        parser.error("the proxy relays to loopback only (--to 127.0.0.1:PORT)")
    with contextlib.suppress(KeyboardInterrupt):
        link = LINKS.get(args.link, UNSHAPED)
        asyncio.run(serve(link, (host, int(port)), args.port, args.netns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
