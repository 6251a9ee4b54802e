"""The test run's port reservations (tests/support/ports.py): what keeps fixtures from colliding."""

from __future__ import annotations

import socket

import pytest

from appliance.supervise.ports import ephemeral_low
from tests.support.ports import BLOCK_SIZE, PortPool, PortTaken, on_a_reserved_port, reserve_port


def test_two_runs_never_hold_the_same_port():
    """Two pools stand for two test runs at once: each holds blocks the other cannot."""
    first, second = PortPool(), PortPool()
    mine = {first.reserve() for _ in range(BLOCK_SIZE + 5)}
    theirs = {second.reserve() for _ in range(BLOCK_SIZE + 5)}
    assert len(mine) == len(theirs) == BLOCK_SIZE + 5
    assert mine.isdisjoint(theirs)


def test_ports_come_from_below_the_ephemeral_range():
    """The kernel never hands these to an outgoing connection's source port."""
    assert all(20000 <= reserve_port() < ephemeral_low() for _ in range(20))


def test_a_port_another_program_listens_on_is_skipped():
    pool = PortPool()
    first = pool.reserve()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", first + 1))
        squatter.listen()
        assert pool.reserve() == first + 2


def test_a_service_that_finds_its_port_taken_starts_on_a_new_one():
    tried: list[int] = []

    def start(port: int) -> int:
        tried.append(port)
        if len(tried) < 3:
            raise PortTaken(port)
        return port

    assert on_a_reserved_port(start) == tried[-1] and len(set(tried)) == 3


def test_a_service_whose_ports_are_always_taken_fails_after_its_tries():
    def never(port: int) -> int:
        raise PortTaken(port)

    with pytest.raises(PortTaken):
        on_a_reserved_port(never, tries=2)
