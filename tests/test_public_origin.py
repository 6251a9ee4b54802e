"""Where users reach the appliance: each step of :func:`public_origin`'s fallback order."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiohttp import web

from appliance.config import Settings
from appliance.public_origin import public_origin
from appliance.web.inputs import request_public_origin
from appliance.web.keys import SETTINGS


def test_the_public_url_comes_first(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path).with_values(
        {"web.public_url": "https://pacs.clinic.example/"}
    )
    assert public_origin(settings, "http://10.0.0.5:8080") == "https://pacs.clinic.example"
    assert public_origin(settings) == "https://pacs.clinic.example"


def test_without_it_the_origin_the_browser_used(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert public_origin(settings, "http://10.0.0.5:8080") == "http://10.0.0.5:8080"


def test_without_a_request_https_on_this_machines_name(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path).with_values({"web.https_port": 9443})
    assert public_origin(settings) == f"https://{socket.getfqdn()}:9443"


async def _origin(request: web.Request) -> web.Response:
    return web.Response(text=request_public_origin(request))


@pytest.mark.parametrize(
    ("public_url", "headers", "expected"),
    [
        ("", {}, "http://{host}"),
        ("", {"X-Forwarded-Proto": "https"}, "https://{host}"),  # nginx's HTTPS listener
        ("", {"Host": "pacs.lan:8443", "X-Forwarded-Proto": "https"}, "https://pacs.lan:8443"),
        (
            "https://pacs.clinic.example",
            {"X-Forwarded-Proto": "https"},
            "https://pacs.clinic.example",
        ),
    ],
)
async def test_a_request_is_answered_with_its_browser_origin(
    aiohttp_client, tmp_path: Path, public_url: str, headers: dict, expected: str
) -> None:
    app = web.Application()
    app[SETTINGS] = Settings(home=tmp_path).with_values({"web.public_url": public_url})
    app.router.add_get("/origin", _origin)
    client = await aiohttp_client(app)
    resp = await client.get("/origin", headers=headers)
    host = f"{client.server.host}:{client.server.port}"
    assert await resp.text() == expected.format(host=host)
