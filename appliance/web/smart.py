"""``/smart/``: the appliance as a SMART on FHIR app launched from an EHR (OpenEMR).

The EHR opens ``/smart/launch?iss=<its FHIR base>&launch=<context>``. The appliance
reads ``{iss}/.well-known/smart-configuration`` (only for an issuer in ``[smart]
issuers``: never a URL a request names), asks for an authorization code with PKCE and
the ``launch`` scope, reads the patient in context from the EHR's FHIR API, takes its
identifier of ``[smart] identifier_system`` as the DICOM Patient ID, opens a session
for the EHR user (role from ``[smart] role_map``) and shows the worklist filtered to
that patient, or the viewer when the patient has one study. docs/openemr.md has the
EHR's side.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from appliance.config import Settings
from appliance.security import audit
from appliance.security.oauth import Endpoints, OAuthError, endpoints_of, fetch_json
from appliance.store.worklist import studies_of_patient
from appliance.web import federation
from appliance.web.auth import public
from appliance.web.keys import DB, DISCOVERY, HTTP, SETTINGS

routes = web.RouteTableDef()
SCOPE = "openid profile fhirUser launch launch/patient patient/Patient.read"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_LAUNCH = 2048


class SmartLaunch(federation.SignInFlow):
    """An EHR's launch of the appliance as a SMART app, for an issuer in ``[smart] issuers``."""

    kind = "smart"
    callback_path = "/smart/callback"
    refused_event = audit.SMART_REFUSED
    signed_in_event = audit.SMART_LAUNCH

    def issuer(self, request: web.Request, named: str) -> str:
        """``named`` without a trailing slash, if ``[smart] issuers`` lists it."""
        wanted = named.strip().rstrip("/")
        if not wanted or wanted not in request.app[SETTINGS].smart.issuer_list:
            raise OAuthError(
                403,
                "issuer_not_allowed",
                f"This appliance does not accept launches from {named[:200]!r}; "
                "an admin adds the EHR's FHIR base URL to [smart] issuers.",
            )
        return wanted

    async def endpoints(self, request: web.Request, issuer: str) -> Endpoints:
        """The EHR's endpoints from its SMART configuration."""
        discovery = request.app[DISCOVERY]
        conf = await discovery.document(issuer + "/.well-known/smart-configuration")
        openid_issuer = conf.get("issuer")
        if not isinstance(openid_issuer, str) or not openid_issuer:
            raise OAuthError(
                502,
                "no_openid_issuer",
                "The EHR's SMART configuration names no OpenID Connect issuer; the appliance "
                "needs an ID token to know the user (capability sso-openid-connect).",
            )
        if "jwks_uri" not in conf:
            conf = {**conf, "jwks_uri": (await discovery.openid(openid_issuer)).jwks_uri}
        if not request.app[SETTINGS].smart.client_id:
            raise OAuthError(
                503, "smart_not_configured", "Set [smart] client_id to allow launches."
            )
        return endpoints_of(conf, openid_issuer)

    def credentials(self, settings: Settings) -> tuple[str, str]:
        return settings.smart.client_id, settings.smart.token_auth

    def authorization(self, request: web.Request, issuer: str) -> tuple[str, str, dict[str, str]]:
        """The ``launch`` scope with the EHR's launch context, the EHR as the audience."""
        context = request.query.get("launch", "")
        if not context or len(context) > MAX_LAUNCH:
            raise OAuthError(400, "missing_launch", "The EHR sent no launch context.")
        return SCOPE, "/", {"launch": context, "aud": issuer}

    async def landing(
        self, request: web.Request, answer: federation.Answer, issuer: str, endpoints: Endpoints
    ) -> tuple[str, dict[str, str]]:
        """The patient in context; their study in the viewer, or their worklist."""
        patient_id = await _patient_id(request, issuer, answer.tokens)
        return _target(request, patient_id), {"patient_id": patient_id, "issuer": issuer}


FLOW = SmartLaunch()


@routes.get("/smart/launch")
@public
async def launch(request: web.Request) -> web.Response:
    """The EHR's launch: on to its authorization endpoint with the launch context."""
    return await FLOW.begin(request, request.query.get("iss", ""))


@routes.get(FLOW.callback_path)
@public
async def callback(request: web.Request) -> web.Response:
    """The EHR's answer: the user and the patient in context; on to their images."""
    return await FLOW.complete(request)


async def _patient_id(request: web.Request, iss: str, tokens: dict[str, Any]) -> str:
    """The DICOM Patient ID of the launch's patient, read from the EHR's FHIR API."""
    patient = tokens.get("patient")
    if not isinstance(patient, str) or not FHIR_ID.match(patient):
        raise OAuthError(502, "no_patient", "The EHR sent no patient in context.")
    resource = await fetch_json(
        request.app[HTTP],
        "GET",
        f"{iss}/Patient/{patient}",
        headers={
            "Authorization": f"Bearer {tokens['access_token']}",
            "Accept": "application/fhir+json",
        },
    )
    system = request.app[SETTINGS].smart.identifier_system
    value = dicom_patient_id(resource, system)
    if value is None:
        raise OAuthError(
            404,
            "no_patient_identifier",
            f"The EHR's patient has no identifier{f' of system {system}' if system else ''}; "
            "check [smart] identifier_system.",
        )
    return value


def dicom_patient_id(patient: dict[str, Any], system: str) -> str | None:
    """The value of the Patient's first identifier of ``system`` (any system if empty)."""
    for identifier in patient.get("identifier") or []:
        if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
            continue
        if not system or identifier.get("system") == system:
            return identifier["value"][:64]
    return None


def _target(request: web.Request, patient_id: str) -> str:
    """The viewer when the patient has exactly one study, else the filtered worklist."""
    studies = studies_of_patient(request.app[DB], patient_id, most=2)
    if len(studies) == 1:
        return f"/pacs-viewer/viewer?StudyInstanceUIDs={quote(studies[0], safe='')}"
    return "/?" + urlencode({"patient": patient_id})
