"""The test OpenID Connect provider: npm's oidc-provider run by ``tests/oidc/provider.mjs``.

Installed by ``bash scripts/setup.sh --test`` (``npm ci`` in ``tests/oidc``). Started on
a free loopback port; its issuer is ``http://localhost:PORT`` so that, seen from an
appliance at ``http://127.0.0.1:...``, it is another site, as a clinic's provider is.
"""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from tests.support.paths import REPO
from tests.support.ports import reserve_port
from tests.support.tools import require_tool

OIDC_DIR = REPO / "tests" / "oidc"
START_TIMEOUT = 20.0


@dataclass(frozen=True)
class IdP:
    """A running provider: its issuer and the FHIR base of its pretend EHR."""

    issuer: str
    port: int

    @property
    def fhir_base(self) -> str:
        return f"{self.issuer}/fhir"


def planned_issuer() -> tuple[str, int]:
    """An issuer URL on a free port, for settings written before the provider starts."""
    port = reserve_port()
    return f"http://localhost:{port}", port


@contextmanager
def running_idp(
    workdir: Path,
    port: int,
    clients: list[dict[str, Any]],
    accounts: dict[str, dict[str, Any]],
    launches: dict[str, str] | None = None,
    patients: dict[str, dict[str, Any]] | None = None,
) -> Iterator[IdP]:
    """Run the provider with these clients, accounts, SMART launches and FHIR patients."""
    node = require_tool("node", "nodejs")
    if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("tests/oidc has no node_modules: run bash scripts/setup.sh --test "
                    "(npm ci in tests/oidc)", pytrace=False)  # fmt: skip
    issuer = f"http://localhost:{port}"
    config = workdir / "idp.json"
    config.write_text(json.dumps({"port": port, "issuer": issuer, "clients": clients,
                                  "accounts": accounts, "launches": launches or {},
                                  "patients": patients or {}}))  # fmt: skip
    log = (workdir / "idp.log").open("wb")
    process = subprocess.Popen([node, str(OIDC_DIR / "provider.mjs"), str(config)],
                               stdout=subprocess.PIPE, stderr=log)  # fmt: skip
    try:
        _wait_listening(process, workdir / "idp.log")
        yield IdP(issuer, port)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _wait_listening(process: subprocess.Popen, log: Path) -> None:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline().decode() if ready else ""
    if not line.startswith("listening"):
        raise AssertionError(f"the test IdP did not start: {line!r} {log.read_text()[-2000:]}")


def browserless_session() -> requests.Session:
    """A cookie-keeping HTTP client that ignores proxy settings (loopback only)."""
    session = requests.Session()
    session.trust_env = False
    return session


def sign_in_at_idp(
    session: requests.Session, start_url: str, login: str, password: str, back_to: str
) -> str:
    """Follow ``start_url`` to the provider, log in, and return the URL the provider
    redirects the browser back to (starting with ``back_to``), without opening it."""
    response = session.get(start_url, allow_redirects=False)
    assert response.status_code == 302, response.text
    form = session.get(response.headers["Location"])
    assert form.status_code == 200 and "/interaction/" in form.url, form.text[:500]
    response = session.post(form.url, data={"login": login, "password": password},
                            allow_redirects=False)  # fmt: skip
    for _ in range(10):
        assert response.is_redirect, (response.status_code, response.text[:500])
        location = urljoin(response.url, response.headers["Location"])
        if location.startswith(back_to):
            return location
        response = session.get(location, allow_redirects=False)
    raise AssertionError("the provider never redirected back")


def fill_idp_form(page, login: str, password: str) -> None:
    """Sign in on the provider's own login form in the browser (playwright's ``page``)."""
    page.fill("#login", login)
    page.fill("#password", password)
    page.click("#submit")
