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

from appliance.security import audit
from appliance.security.federated import Policy, sign_in
from appliance.security.oauth import Client, Endpoints, OAuthError, endpoints_of, fetch_json
from appliance.store.worklist import studies_of_patient
from appliance.web import federation
from appliance.web.auth import public
from appliance.web.inputs import client_address, request_public_origin
from appliance.web.keys import DB, DISCOVERY, HTTP, SETTINGS

routes = web.RouteTableDef()
KIND = "smart"
CALLBACK = "/smart/callback"
SCOPE = "openid profile fhirUser launch launch/patient patient/Patient.read"
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_LAUNCH = 2048


def _allowed_issuer(request: web.Request, iss: str) -> str:
    """``iss`` without a trailing slash, if ``[smart] issuers`` lists it."""
    wanted = iss.strip().rstrip("/")
    if not wanted or wanted not in request.app[SETTINGS].smart_issuer_list:
        raise OAuthError(
            403,
            "issuer_not_allowed",
            f"This appliance does not accept launches from {iss[:200]!r}; "
            "an admin adds the EHR's FHIR base URL to [smart] issuers.",
        )
    return wanted


async def _ehr(request: web.Request, iss: str) -> tuple[Endpoints, Client]:
    """The EHR's endpoints from its SMART configuration, and this app as its client."""
    discovery = request.app[DISCOVERY]
    conf = await discovery.document(iss + "/.well-known/smart-configuration")
    issuer = conf.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise OAuthError(
            502,
            "no_openid_issuer",
            "The EHR's SMART configuration names no OpenID Connect issuer; the appliance "
            "needs an ID token to know the user (capability sso-openid-connect).",
        )
    if "jwks_uri" not in conf:
        conf = {**conf, "jwks_uri": (await discovery.openid(issuer)).jwks_uri}
    settings = request.app[SETTINGS]
    if not settings.smart_client_id:
        raise OAuthError(503, "smart_not_configured", "Set [smart] client_id to allow launches.")
    client = Client(
        settings.smart_client_id,
        federation.client_secret(request, KIND),
        request_public_origin(request) + CALLBACK,
        settings.smart_token_auth,
    )
    return endpoints_of(conf, issuer), client


@routes.get("/smart/launch")
@public
async def launch(request: web.Request) -> web.Response:
    """The EHR's launch: on to its authorization endpoint with the launch context."""
    try:
        iss = _allowed_issuer(request, request.query.get("iss", ""))
        context = request.query.get("launch", "")
        if not context or len(context) > MAX_LAUNCH:
            raise OAuthError(400, "missing_launch", "The EHR sent no launch context.")
        endpoints, client = await _ehr(request, iss)
        return await federation.start(
            request, KIND, endpoints, client, SCOPE, iss, "/", launch=context, aud=iss
        )
    except OAuthError as exc:
        return federation.refused(request, exc, audit.SMART_REFUSED)


@routes.get(CALLBACK)
@public
async def callback(request: web.Request) -> web.Response:
    """The EHR's answer: the user and the patient in context; on to their images."""
    try:
        pending = federation.take_pending(request, KIND)
        iss = _allowed_issuer(request, pending.issuer)
        endpoints, client = await _ehr(request, iss)
        answer = await federation.finish(request, pending, endpoints, client)
        policy = Policy.from_settings(request.app[SETTINGS], KIND)
        patient_id = await _patient_id(request, iss, answer.tokens)
        username, role = sign_in(request.app[DB], policy, endpoints.issuer, answer.claims)
    except OAuthError as exc:
        return federation.refused(request, exc, audit.SMART_REFUSED)
    target = _target(request, patient_id)
    audit.record(
        request.app[DB],
        audit.SMART_LAUNCH,
        username=username,
        client=client_address(request),
        patient_id=patient_id,
        issuer=iss,
        role=role,
    )
    return federation.open_session(request, username, role, target)


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
    system = request.app[SETTINGS].smart_identifier_system
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
