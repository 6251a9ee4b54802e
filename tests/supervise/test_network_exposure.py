"""What another machine on the clinic's network can reach: nginx and the DICOM port only.

The appliance runs in a network namespace of the test's own, listening on all its
interfaces as in a clinic; a second namespace plays the other machine.
"""

from __future__ import annotations

import pytest

from tests.support.clients import curl_status
from tests.support.netns import host_pair, require_netns
from tests.support.running import make_appliance
from tests.support.tools import require_tool
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """(appliance in the server namespace, the host pair)."""
    require_netns()
    for program, package in (("curl", "curl"), ("echoscu", "dcmtk")):
        require_tool(program, package)
    with host_pair() as pair:
        appliance = make_appliance(tmp_path_factory.mktemp("netns"), {"network.bind": "0.0.0.0"})
        appliance.prefix = pair.exec_prefix(pair.server)
        appliance.start(wait=False)
        health = f"http://127.0.0.1:{appliance.settings.web.http_port}/api/health"
        wait_for(lambda: pair.run(pair.server, *curl_status(health)).stdout == "200", 60,
                 "the appliance in the namespace to be healthy")  # fmt: skip
        yield appliance, pair
        appliance.stop()


def _curl_from_client(pair, url: str, *extra: str) -> str:
    return pair.run(pair.client, *curl_status(url, "--max-time", "5", *extra)).stdout


def test_remote_machine_reaches_nginx(remote):
    appliance, pair = remote
    assert (
        _curl_from_client(pair, f"http://{pair.server_ip}:{appliance.settings.web.http_port}/")
        == "200"
    )


def test_remote_machine_reaches_the_dicom_port(remote):
    appliance, pair = remote
    echo = pair.run(
        pair.client,
        "echoscu",
        "-aec",
        "NEURONOVA",
        pair.server_ip,
        str(appliance.settings.dicom.port),
    )
    assert echo.returncode == 0, echo.stderr


@pytest.mark.parametrize("port", ["app_port", "gate_port"])
def test_remote_machine_cannot_reach_the_app_or_its_frame_gate(remote, port):
    appliance, pair = remote
    url = f"http://{pair.server_ip}:{getattr(appliance.settings.internal, port)}/api/health/live"
    assert _curl_from_client(pair, url) == "000"  # connection refused: loopback only


def test_orthanc_refuses_a_remote_client_even_with_its_credentials(remote):
    from appliance.store.orthanc import orthanc_auth_header

    appliance, pair = remote
    auth = orthanc_auth_header(appliance.settings)
    url = f"http://{pair.server_ip}:{appliance.settings.internal.orthanc_port}/system"
    assert _curl_from_client(pair, url, "-H", f"Authorization: {auth}") in ("401", "403")
    local_url = f"http://127.0.0.1:{appliance.settings.internal.orthanc_port}/system"
    local = pair.run(pair.server, *curl_status(local_url, "-H", f"Authorization: {auth}"))
    assert local.stdout == "200"


def test_nginx_health_location_is_loopback_only(remote):
    appliance, pair = remote
    url = f"http://{pair.server_ip}:{appliance.settings.web.http_port}/nginx-health"
    assert _curl_from_client(pair, url) == "403"
