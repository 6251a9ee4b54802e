"""The viewer bench's link emulation (bench/linkproxy.py) shapes what it relays: time grows
with the bytes at the link's rate, every round trip costs at least the configured delay,
connections share the rate, and the link holds no more than it is sized for.

Ratios and lower bounds only: on a busy machine the proxy can be slower than its link, never
faster.
"""

from __future__ import annotations

import asyncio
import time

from bench.linkproxy import CHUNK, Link, LinkProxy

LINK = Link("test", rate_bps=40e6, rtt_s=0.030, queue_bytes=64 * 1024)  # 5 MB/s
MB = 1_000_000


async def start_upstream():
    """A loopback server: for a line ``N\\n`` it sends N bytes; ``echo`` echoes one byte."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command = line.strip()
            if command == b"echo":
                writer.write(await reader.readexactly(1))
            else:
                writer.write(b"x" * int(command))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def through_proxy(link: Link = LINK):
    server, port = await start_upstream()
    proxy = LinkProxy(link, ("127.0.0.1", port))
    return server, proxy, await proxy.start()


async def fetch(port: int, size: int) -> float:
    """Seconds from connecting to having ``size`` bytes through the proxy."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{size}\n".encode())
    await reader.readexactly(size)
    seconds = time.monotonic() - start
    writer.close()
    return seconds


async def test_time_grows_with_the_bytes_at_the_links_rate() -> None:
    server, proxy, port = await through_proxy()
    # The best of five, the two sizes interleaved: a busy machine can only make a transfer
    # slower, and a busy moment then slows both sizes alike.
    ones, twos = [], []
    for _ in range(5):
        ones.append(await fetch(port, 1 * MB))
        twos.append(await fetch(port, 2 * MB))
    one, two = min(ones), min(twos)
    await proxy.close()
    server.close()
    # Never faster than the line rate, and twice the bytes takes about twice the time
    # (a proxy whose cost grew with the square of the bytes would take 4x).
    assert one >= 1 * MB * 8 / LINK.rate_bps
    assert two >= 2 * MB * 8 / LINK.rate_bps
    transfer_one, transfer_two = one - 2 * LINK.rtt_s, two - 2 * LINK.rtt_s
    assert 1.6 <= transfer_two / transfer_one <= 3.0, (one, two)


async def test_a_round_trip_costs_at_least_the_configured_delay() -> None:
    server, proxy, port = await through_proxy()
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"echo\n!")
    assert await reader.readexactly(1) == b"!"
    first = time.monotonic() - start  # the handshake's round trip, then the echo's
    trips = []
    for _ in range(5):
        start = time.monotonic()
        writer.write(b"echo\n?")
        await reader.readexactly(1)
        trips.append(time.monotonic() - start)
    writer.close()
    await proxy.close()
    server.close()
    assert first >= 2 * LINK.rtt_s
    assert min(trips) >= LINK.rtt_s


async def test_connections_share_the_rate() -> None:
    server, proxy, port = await through_proxy()
    alone = min([await fetch(port, 2 * MB) for _ in range(2)])
    together = min(
        [await asyncio.gather(fetch(port, 2 * MB), fetch(port, 2 * MB)) for _ in range(2)],
        key=max,
    )
    await proxy.close()
    server.close()
    # Two at once move twice the bytes over the same link: the last one ends about when
    # one of twice the size would.
    assert max(together) >= 4 * MB * 8 / LINK.rate_bps
    assert 1.6 <= max(together) / alone <= 2.4, (alone, together)


async def test_the_link_holds_no_more_than_its_capacity() -> None:
    fast = Link("fast", rate_bps=400e6, rtt_s=0.010, queue_bytes=128 * 1024)
    server, proxy, port = await through_proxy(fast)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    size = 48 * MB  # far more than loopback's socket buffers and the link together
    writer.write(f"{size}\n".encode())
    held: list[int] = []

    async def watch() -> None:  # the client reads nothing: the link fills, then stays full
        while len(held) < 50 or held[-1] < fast.capacity_bytes - CHUNK:
            held.append(proxy.down.held)
            await asyncio.sleep(0.01)
        for _ in range(30):
            held.append(proxy.down.held)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(watch(), timeout=60)
    assert max(held) <= fast.capacity_bytes
    assert held[-1] >= fast.capacity_bytes - CHUNK
    # Now reading: everything arrives, complete.
    received = 0
    while received < size:
        received += len(await reader.read(1 << 20))
    writer.close()
    await proxy.close()
    server.close()
    assert received == size
