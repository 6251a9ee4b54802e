"""Storing objects in Orthanc over its REST API (used by the queue's workers)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from appliance.config import Settings
from appliance.orthanc import orthanc_auth_header, orthanc_url

TIMEOUT = 60


class OrthancUnavailable(Exception):
    """Orthanc did not answer; worth retrying later."""


class OrthancRejected(Exception):
    """Orthanc refused the object; retrying the same bytes will not help."""


class OrthancStore:
    """POST Part 10 files to ``/instances``."""

    def __init__(self, settings: Settings) -> None:
        self._url = f"{orthanc_url(settings)}/instances"
        self._auth = orthanc_auth_header(settings)

    def store(self, data: bytes) -> str:
        """Store one object; returns Orthanc's instance id."""
        request = urllib.request.Request(
            self._url,
            data=data,
            method="POST",
            headers={"Authorization": self._auth, "Content-Type": "application/dicom"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
                return json.load(resp)["ID"]
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in (401, 403):
                raise OrthancUnavailable(f"Orthanc answered HTTP {exc.code}") from exc
            raise OrthancRejected(f"Orthanc refused the object (HTTP {exc.code})") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise OrthancUnavailable(f"Orthanc is unreachable ({exc})") from exc
