"""HTTP requests to a running appliance, as a browser or a script would send them."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import TYPE_CHECKING

import requests

from appliance import loopback

if TYPE_CHECKING:
    from tests.support.running import Appliance


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0):
    """GET ``url``; returns (status, headers, body) also for 4xx/5xx answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with loopback.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def api_token(appliance: Appliance, username: str, password: str) -> str:
    """An access token from the gateway's login API."""
    resp = requests.post(f"{appliance.url}/api/auth/login", timeout=10,
                         json={"username": username, "password": password})  # fmt: skip
    resp.raise_for_status()
    return resp.json()["access_token"]
