"""Orthanc as the archive's store: where its REST API is, its credentials, and storing
objects in it over that API (used by the queue's workers)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import urllib.error
import urllib.request
from typing import Any

from appliance import loopback
from appliance.config import Settings
from appliance.security.keys import read_secret

TIMEOUT = 60
ORTHANC_USER = "neuronova"
# Orthanc serves DICOMweb under the public path, so the BulkDataURIs it writes into
# metadata (built from the Forwarded header nginx sends) point back through the gateway.
DICOMWEB_ROOT = "/api/pacs/dicom-web"
# The worker asks Orthanc for metadata in this host's name, and cuts the origin from the
# BulkDataURIs (appliance.store.series_metadata): the prepared files serve every host.
METADATA_HOST = "neuronova.invalid"
METADATA_ORIGIN = f"http://{METADATA_HOST}"


def orthanc_auth_header(settings: Settings) -> str:
    """The ``Authorization`` header value for Orthanc's REST API."""
    password = read_secret(settings.layout.orthanc_password_file)
    return "Basic " + base64.b64encode(f"{ORTHANC_USER}:{password}".encode()).decode()


def orthanc_url(settings: Settings) -> str:
    """Base URL of Orthanc's REST API (loopback, or ``[internal] orthanc_host``)."""
    return f"http://{settings.internal.orthanc_host}:{settings.internal.orthanc_port}"


def instance_id(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Orthanc's id of an instance: the SHA-1 of its PatientID and its study, series and
    SOP Instance UIDs joined by ``|``, in five groups of eight hex digits (the Orthanc
    Book, "Orthanc identifiers"). Reading by it costs Orthanc one index look-up, where
    ``/tools/lookup`` by UID grows with the archive (40-150 ms at 75,000 instances)."""
    digest = hashlib.sha1("|".join((patient_id, study_uid, series_uid, sop_uid)).encode())
    hexadecimal = digest.hexdigest()
    return "-".join(hexadecimal[i : i + 8] for i in range(0, 40, 8))


class OrthancUnavailable(Exception):
    """Orthanc did not answer; worth retrying later."""


class OrthancRejected(Exception):
    """Orthanc refused the object; retrying the same bytes will not help."""


class OrthancStore:
    """POST Part 10 files to ``/instances``; read stored ones back; delete studies."""

    def __init__(self, settings: Settings) -> None:
        self._base = orthanc_url(settings)
        self._auth = orthanc_auth_header(settings)

    def store(self, data: bytes) -> str:
        """Store one object; returns Orthanc's instance id."""
        return json.loads(self._call("/instances", data, "application/dicom"))["ID"]

    def fetch(self, sop_uid: str, keys: tuple[str, str, str] | None = None) -> bytes | None:
        """The stored Part 10 file of a SOP Instance UID, or None if Orthanc has none.

        ``keys`` (PatientID, Study and Series Instance UIDs, as the journal has them) read
        it by :func:`instance_id`; if Orthanc holds none by that id (a PatientID Orthanc
        normalised otherwise), the UID is looked up.
        """
        if keys is not None:
            with contextlib.suppress(OrthancRejected):
                return self._call(f"/instances/{instance_id(*keys, sop_uid)}/file")
        ids = self.lookup_ids(sop_uid)
        return self._call(f"/instances/{ids[0]}/file") if ids else None

    def lookup_ids(self, uid: str, level: str = "Instance") -> list[str]:
        """Orthanc's ids of the resources of ``level`` a DICOM UID names (``/tools/lookup``,
        whose cost grows with the archive)."""
        found = json.loads(self._call("/tools/lookup", uid.encode(), "text/plain"))
        return [item["ID"] for item in found if item.get("Type") == level]

    def instance_ids(self) -> list[str]:
        """Orthanc's ids of every instance it holds."""
        return json.loads(self._call("/instances"))

    def instance_count(self) -> int:
        """How many instances Orthanc holds (``/statistics``)."""
        return json.loads(self._call("/statistics"))["CountInstances"]

    def changes(self, since: int, limit: int) -> dict[str, Any]:
        """Orthanc's change log after sequence number ``since``: at most ``limit`` changes
        (``Changes``), whether that is all (``Done``) and the last number (``Last``)."""
        return json.loads(self._call(f"/changes?since={since}&limit={limit}"))

    def newest_change(self) -> dict[str, Any]:
        """The newest change of Orthanc's log (in ``Changes``, if any) and ``Last``."""
        return json.loads(self._call("/changes?last"))

    def attachment_uuid(self, instance_id: str) -> str | None:
        """The storage file name of an instance's DICOM file; None if the instance is gone."""
        try:
            info = self._call(f"/instances/{instance_id}/attachments/dicom/info")
        except OrthancRejected:
            return None
        return json.loads(info)["Uuid"]

    def instance_metadata(self, study: str, series: str, sop: str) -> bytes:
        """Orthanc's WADO-RS metadata of one instance (a JSON array of one object), its
        BulkDataURIs starting with :data:`METADATA_ORIGIN`."""
        path = f"{DICOMWEB_ROOT}/studies/{study}/series/{series}/instances/{sop}/metadata"
        return self._call(path, forwarded=f"host={METADATA_HOST};proto=http")

    def studies_tags(self, study_uids: list[str]) -> dict[str, dict[str, str]]:
        """The main DICOM tags Orthanc keeps of each of these studies it holds, by
        StudyInstanceUID (one ``/tools/find`` with a UID list)."""
        query = {"StudyInstanceUID": "\\".join(study_uids)}
        body = json.dumps({"Level": "Study", "Query": query, "Expand": True}).encode()
        found = json.loads(self._call("/tools/find", body, "application/json"))
        return {s["MainDicomTags"]["StudyInstanceUID"]: s["MainDicomTags"] for s in found}

    def answers(self) -> bool:
        """Whether Orthanc answers HTTP now, whatever the status: a store failing while it
        does fails for that object, not because of an outage."""
        try:
            self._call("/system")
        except OrthancUnavailable as exc:
            return isinstance(exc.__cause__, urllib.error.HTTPError)
        except OrthancRejected:
            return True
        return True

    def delete_study(self, study_uid: str) -> bool:
        """Delete a study (every series and instance) from Orthanc; False if it has none."""
        ids = self.lookup_ids(study_uid, "Study")
        for orthanc_id in ids:
            self._call(f"/studies/{orthanc_id}", method="DELETE")
        return bool(ids)

    def _call(
        self,
        path: str,
        data: bytes | None = None,
        kind: str = "",
        method: str = "",
        forwarded: str = "",
    ) -> bytes:
        headers = {"Authorization": self._auth}
        if kind:
            headers["Content-Type"] = kind
        if forwarded:
            headers["Forwarded"] = forwarded
        request = urllib.request.Request(
            self._base + path, data=data, headers=headers,
            method=method or ("POST" if data is not None else "GET"),
        )  # fmt: skip
        try:
            with loopback.urlopen(request, timeout=TIMEOUT) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in (401, 403):
                raise OrthancUnavailable(f"Orthanc answered HTTP {exc.code}") from exc
            raise OrthancRejected(f"Orthanc refused the object (HTTP {exc.code})") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise OrthancUnavailable(f"Orthanc is unreachable ({exc})") from exc
