"""The vocabulary of ``neuronova doctor``'s checks: an outcome (:class:`Check`) and what
every check is given (:class:`Context`)."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import sqlite_utils

from appliance.config import Settings
from appliance.jobs.queue import Queue
from appliance.layout import HomeLayout

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``status`` is OK, WARN or FAIL; ``fix`` says what to do."""

    name: str
    status: str
    message: str
    fix: str = ""
    took_ms: int | None = None  # from its start to its end, beside the others (doctor)


@dataclass
class Context:
    """What the checks share: settings, database, HTTP client, queue and probe token."""

    settings: Settings
    db: sqlite_utils.Database
    http: aiohttp.ClientSession
    queue: Queue
    token: str = ""

    @property
    def layout(self) -> HomeLayout:
        return self.settings.layout

    @property
    def nginx_url(self) -> str:
        """nginx on loopback, as a browser on this machine reaches it."""
        s = self.settings
        if s.web.redirect_to_https:
            return f"https://{s.network.probe_host}:{s.web.https_port}"
        return f"http://{s.network.probe_host}:{s.web.http_port}"

    @property
    def app_url(self) -> str:
        return f"http://{self.settings.internal.app_host}:{self.settings.internal.app_port}"

    async def get(self, url: str, auth: bool = False) -> tuple[int, Any, bytes]:
        """GET ``url`` (our own self-signed certificate accepted): status, headers, body."""
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        tls: ssl.SSLContext | bool = not url.startswith("https:")
        async with self.http.get(url, headers=headers, ssl=tls, allow_redirects=False) as resp:
            return resp.status, resp.headers, await resp.read()


CheckFn = Callable[[Context], Awaitable[Check]]
