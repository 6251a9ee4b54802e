"""Test hosts in network namespaces the test creates itself (needs root and iproute2).

A pair of namespaces joined by a veth link, addressed from 198.18.0.0/15 (reserved for
benchmarking, RFC 2544), so a test can reach the appliance from "another machine"
without sending a packet to any real address of this one.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from tests.support.tools import require_tool


@dataclass(frozen=True)
class HostPair:
    """Two namespaces: ``server`` (address ``server_ip``) and ``client``."""

    server: str
    client: str
    server_ip: str
    client_ip: str

    def exec_prefix(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    def run(
        self, namespace: str, *command: str, timeout: float = 20
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.exec_prefix(namespace), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def require_netns() -> None:
    """Fail the test (never skip) unless this process may create network namespaces."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root: run the tests as root, as CI does",
                    pytrace=False)  # fmt: skip
    require_tool("ip", "iproute2")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def host_pair(subnet: str = "198.18.77") -> Iterator[HostPair]:
    """Create the two namespaces and their link; remove them afterwards."""
    tag = uuid.uuid4().hex[:6]
    pair = HostPair(f"nn-srv-{tag}", f"nn-cli-{tag}", f"{subnet}.1", f"{subnet}.2")
    veth_s, veth_c = f"nns{tag}", f"nnc{tag}"
    try:
        for ns in (pair.server, pair.client):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip(
            "link",
            "add",
            veth_s,
            "netns",
            pair.server,
            "type",
            "veth",
            "peer",
            "name",
            veth_c,
            "netns",
            pair.client,
        )
        _ip("-n", pair.server, "addr", "add", f"{pair.server_ip}/30", "dev", veth_s)
        _ip("-n", pair.client, "addr", "add", f"{pair.client_ip}/30", "dev", veth_c)
        _ip("-n", pair.server, "link", "set", veth_s, "up")
        _ip("-n", pair.client, "link", "set", veth_c, "up")
        yield pair
    finally:
        for ns in (pair.server, pair.client):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
