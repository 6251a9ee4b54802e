"""HTTP requests to a running appliance, as a browser or a script would send them."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from dicomweb_client.api import DICOMwebClient

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


def dicomweb(appliance: Appliance, token: str) -> DICOMwebClient:
    """A DICOMweb client of the gateway's ``/api/pacs/dicom-web`` with ``token``."""
    return DICOMwebClient(
        f"{appliance.url}/api/pacs/dicom-web", headers={"Authorization": f"Bearer {token}"}
    )


def curl_status(url: str, *options: str) -> list[str]:
    """A curl command printing only the HTTP status of a GET of ``url`` ("000": no answer),
    for requests made from elsewhere (a network namespace, another source address)."""
    return ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *options, url]


class HttpsClient:
    """A user of an appliance over HTTPS on its published port, trusting the appliance's own
    certificate (the cloud profile's containers, a deployed "VM")."""

    def __init__(self, https_port: int, certificate: Path, host: str = "127.0.0.1") -> None:
        self.base = f"https://{host}:{https_port}"
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(certificate)

    def serving(self) -> bool:
        """Whether the app answers through nginx now (401: no session yet)."""
        try:
            return self.session.get(f"{self.base}/api/auth/check", timeout=5).status_code == 401
        except requests.RequestException:
            return False

    def login(self, username: str, password: str) -> str:
        """An access token of ``username``."""
        resp = self.session.post(f"{self.base}/api/auth/login", timeout=10,
                                 json={"username": username, "password": password})  # fmt: skip
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def instances(self, token: str, study_uid: str, series_uid: str) -> list[dict]:
        """The series' instances as QIDO-RS lists them (none: an empty list)."""
        url = (f"{self.base}/api/pacs/dicom-web/studies/{study_uid}/series/{series_uid}/"
               "instances")  # fmt: skip
        resp = self.session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert resp.status_code in (200, 204), resp.text
        return resp.json() if resp.status_code == 200 else []
