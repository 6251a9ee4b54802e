"""[web] cloudflare: the client address comes from CF-Connecting-IP only on requests from
Cloudflare's published ranges (bundled_nginx/cloudflare.conf.template); the setting is
off by default, and the header is ignored from any other address."""

from __future__ import annotations

import ipaddress
import re
import sqlite3

import pytest
import requests

import bundled_nginx
from appliance.security import audit

pytestmark = pytest.mark.slow

SPOOFED = "203.0.113.9"


def failed_login_clients(appliance) -> list[str]:
    """The client address of every failed login in the audit trail."""
    database = appliance.settings.home / "db" / "appliance.db"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT client FROM audit WHERE event = ?", [audit.LOGIN_FAILED])
        return [row[0] for row in rows]


def fail_login_claiming(appliance, address: str) -> None:
    resp = requests.post(f"{appliance.url}/api/auth/login", timeout=10,
                         json={"username": "admin", "password": "wrong-password-1"},
                         headers={"CF-Connecting-IP": address})  # fmt: skip
    assert resp.status_code == 401, resp.text


def test_the_ranges_file_holds_only_address_ranges():
    text = bundled_nginx.template_text("cloudflare.conf.template")
    ranges = re.findall(r"^\s*set_real_ip_from (\S+);$", text, re.M)
    assert len(ranges) >= 15
    for network in ranges:
        ipaddress.ip_network(network)  # raises on anything else
    assert "real_ip_header CF-Connecting-IP;" in text


@pytest.mark.parametrize("cloudflare", [False, True])
def test_the_header_is_ignored_unless_the_request_comes_from_cloudflare(
    appliance_factory, cloudflare
):
    appliance = appliance_factory({"web.cloudflare": cloudflare}).start()
    conf = (appliance.settings.home / "run" / "nginx" / "nginx.conf").read_text()
    assert ("set_real_ip_from 173.245.48.0/20;" in conf) is cloudflare
    fail_login_claiming(appliance, SPOOFED)
    assert failed_login_clients(appliance) == ["127.0.0.1"]
