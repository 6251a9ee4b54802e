"""Single sign-on and SMART App Launch against a real OpenID Connect provider.

npm's oidc-provider (``tests/oidc``) plays the clinic's identity provider and an EHR
(OpenEMR's role: SMART configuration, launch context, a FHIR Patient endpoint). One
appliance, configured for both, runs for the module. The happy paths run in headless
Chromium; the attacks (another issuer, a replayed state, an expired ID token, another
nonce, another browser) go over plain HTTP, each refused with a reason and an audit row.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit

import playwright.sync_api as playwright_api
import pydicom
import pytest

from appliance.db import open_database
from appliance.security.keys import write_private_file
from bench.synthetic import make_slices, write_series
from tests.support.idp import (
    IdP,
    browserless_session,
    fill_idp_form,
    planned_issuer,
    running_idp,
    sign_in_at_idp,
)
from tests.support.running import Appliance, make_appliance, run_cli, storescu, wait_stored

pytestmark = [pytest.mark.slow]

CLIENT_ID, SMART_CLIENT_ID = "neuronova", "neuronova-smart"
SECRET = "fixture-client-secret-0123456789abcdef"
SMART_SECRET = "fixture-smart-secret-fedcba9876543210"
PASSWORD = "idp password"
MRN_SYSTEM = "urn:oid:1.2.36.146.595.217.0.1"
ONE_STUDY_MRN, NO_STUDY_MRN = "SMART-MRN-1", "SMART-MRN-2"
LAUNCHES = {"launch-one": "pat-1", "launch-none": "pat-2"}


def _account(groups: list[str], tamper: str | None = None, **claims: str) -> dict:
    return {"password": PASSWORD, "tamper": tamper, "claims": {"groups": groups, **claims}}


ACCOUNTS = {
    name: _account(groups, tamper, preferred_username=name, fhirUser="Practitioner/" + name)
    for name, groups, tamper in (
        ("dr.sso", ["staff", "radiologists"], None),
        ("replay.user", ["radiologists"], None),
        ("other.browser", ["radiologists"], None),
        ("evil.iss", ["radiologists"], "wrong_iss"),
        ("late.token", ["radiologists"], "expired"),
        ("wrong.nonce", ["radiologists"], "nonce"),
        ("forged.sig", ["radiologists"], "foreign_key"),
        ("admin", ["radiologists"], None),  # the appliance's local admin: never taken over
        ("no.role", ["visitors"], None),
    )
}
PATIENTS = {
    pid: {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {"system": "urn:other", "value": "NOT-THIS-" + mrn},
            {"system": MRN_SYSTEM, "value": mrn},
        ],
    }
    for pid, mrn in (("pat-1", ONE_STUDY_MRN), ("pat-2", NO_STUDY_MRN))
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Iterator[tuple[Appliance, IdP]]:
    """The appliance (single sign-on and SMART configured) and the provider, both running."""
    issuer, port = planned_issuer()
    appliance = make_appliance(
        tmp_path_factory.mktemp("sso"),
        {
            "oidc.issuer": issuer,
            "oidc.client_id": CLIENT_ID,
            "oidc.display_name": "Fixture IdP",
            "oidc.scopes": "openid profile groups",
            "oidc.role_map": "admins = admin, radiologists = radiologist",
            "smart.issuers": f"{issuer}/fhir",
            "smart.client_id": SMART_CLIENT_ID,
            "smart.identifier_system": MRN_SYSTEM,
            "smart.role_map": "Practitioner = radiologist",
            "smart.token_auth": "client_secret_post",  # as OpenEMR registers confidential apps
        },
    )
    layout = appliance.settings.layout
    write_private_file(layout.client_secret_file("oidc"), SECRET.encode())
    write_private_file(layout.client_secret_file("smart"), SMART_SECRET.encode())
    # The provider enforces each client's registered method: the SSO client's secret in
    # the Authorization header only, the SMART client's in the form body only.
    clients = [
        {"client_id": CLIENT_ID, "client_secret": SECRET,
         "redirect_uris": [f"{appliance.url}/api/auth/oidc/callback"]},
        {"client_id": SMART_CLIENT_ID, "client_secret": SMART_SECRET,
         "token_endpoint_auth_method": "client_secret_post",
         "redirect_uris": [f"{appliance.url}/smart/callback"]},
    ]  # fmt: skip
    workdir = tmp_path_factory.mktemp("idp")
    with running_idp(workdir, port, clients, ACCOUNTS, LAUNCHES, PATIENTS) as idp:
        appliance.start()
        yield appliance, idp
        appliance.stop()


def audit_rows(appliance: Appliance, event: str) -> list[dict]:
    db = open_database(appliance.settings.layout.database_file)
    rows = [
        {**row, "detail": json.loads(row["detail"] or "{}")}
        for row in db["audit"].rows_where("event = ?", [event], order_by="id")
    ]
    db.close()
    return rows


def sso_callback_url(appliance: Appliance, session, login: str) -> str:
    start = f"{appliance.url}/api/auth/oidc/start?next=/shares"
    return sign_in_at_idp(session, start, login, PASSWORD, appliance.url)


# --------------------------------------------------------------------------- single sign-on


def test_config_endpoint_is_public(setup) -> None:
    appliance, _ = setup
    session = browserless_session()
    body = session.get(f"{appliance.url}/api/auth/oidc").json()
    assert body == {"enabled": True, "display_name": "Fixture IdP"}


@pytest.mark.browser
def test_sso_in_browser(setup, new_context) -> None:
    """The login page's button, the provider's form, back signed in with the mapped role."""
    appliance, _ = setup
    page = new_context().new_page()
    page.goto(f"{appliance.url}/login")
    page.get_by_role("link", name="Sign in with Fixture IdP").click()
    fill_idp_form(page, "dr.sso", PASSWORD)
    page.wait_for_url(f"{appliance.url}/")
    me = page.evaluate("fetch('/api/auth/me').then(r => r.json())")
    assert me["username"] == "dr.sso" and me["role"] == "radiologist"
    rows = [r for r in audit_rows(appliance, "sso_login") if r["username"] == "dr.sso"]
    assert rows and rows[-1]["detail"]["role"] == "radiologist"
    users = run_cli(appliance, "user", "list")
    assert "dr.sso" in users.stdout


def test_refresh_works_after_sso(setup) -> None:
    """The session is the one a password login opens: its refresh cookie rotates."""
    appliance, _ = setup
    session = browserless_session()
    url = sso_callback_url(appliance, session, "replay.user")
    page = session.get(url, headers={"Accept": "text/html"})
    assert page.status_code == 200 and 'url=/shares"' in page.text
    csrf = session.cookies.get("nn_csrf")
    refreshed = session.post(f"{appliance.url}/api/auth/refresh", headers={"X-CSRF-Token": csrf})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["user"] == {"username": "replay.user", "role": "radiologist"}


@pytest.mark.parametrize(
    ("login", "status", "reason"),
    [
        ("evil.iss", 401, "wrong_issuer"),
        ("late.token", 401, "id_token_expired"),
        ("wrong.nonce", 401, "nonce_mismatch"),
        ("forged.sig", 401, "bad_signature"),
        ("admin", 403, "username_taken"),
        ("no.role", 403, "no_role"),
    ],
)
def test_sso_refusals(setup, login: str, status: int, reason: str) -> None:
    """ID tokens re-signed with the provider's own key after one change: each refused."""
    appliance, _ = setup
    session = browserless_session()
    answer = session.get(sso_callback_url(appliance, session, login))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == reason
    assert "nn_session" not in session.cookies
    assert reason in [row["detail"]["reason"] for row in audit_rows(appliance, "sso_refused")]


def test_replayed_state_is_refused(setup) -> None:
    appliance, _ = setup
    session = browserless_session()
    url = sso_callback_url(appliance, session, "replay.user")
    assert session.get(url).status_code == 200
    again = session.get(url)
    assert again.status_code == 400 and again.json()["error"] == "unknown_state"
    page = session.get(url, headers={"Accept": "text/html"})
    assert page.status_code == 400 and "Sign-in refused" in page.text
    assert "unknown_state" in [r["detail"]["reason"] for r in audit_rows(appliance, "sso_refused")]


def test_answer_in_another_browser_is_refused(setup) -> None:
    """Login CSRF: a victim's browser opening the attacker's answer is not signed in."""
    appliance, _ = setup
    url = sso_callback_url(appliance, browserless_session(), "other.browser")
    victim = browserless_session()
    answer = victim.get(url)
    assert answer.status_code == 400 and answer.json()["error"] == "wrong_browser"
    assert "nn_session" not in victim.cookies


def test_open_redirect_is_refused(setup) -> None:
    appliance, _ = setup
    session = browserless_session()
    start = f"{appliance.url}/api/auth/oidc/start?next=//evil.example/x"
    page = session.get(sign_in_at_idp(session, start, "replay.user", PASSWORD, appliance.url))
    assert page.status_code == 200 and 'url=/"' in page.text


def test_local_login_still_works(setup) -> None:
    appliance, _ = setup
    session = browserless_session()
    body = {"username": "admin", "password": appliance.admin_password}
    login = session.post(f"{appliance.url}/api/auth/login", json=body)
    assert login.status_code == 200


# --------------------------------------------------------------------------- SMART launch


@pytest.fixture(scope="module")
def one_study(setup, tmp_path_factory) -> str:
    """The Study Instance UID of a small CT study of the launch patient, stored."""
    appliance, _ = setup
    series = write_series(tmp_path_factory.mktemp("smart-ct"), make_slices(2))
    for path in series.files:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = ONE_STUDY_MRN, "SMART^LAUNCH"
        ds.save_as(path, enforce_file_format=True)
    sent = storescu(appliance, series.files, "SMARTSCU")
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, series.sop_uids)
    return pydicom.dcmread(series.files[0]).StudyInstanceUID


def launch_url(appliance: Appliance, idp: IdP, launch: str) -> str:
    return f"{appliance.url}/smart/launch?" + urlencode({"iss": idp.fhir_base, "launch": launch})


@pytest.mark.browser
def test_smart_launch_opens_the_viewer(setup, one_study, new_context) -> None:
    """From the EHR's launch to the patient's one study in the viewer, in Chromium."""
    appliance, idp = setup
    page = new_context().new_page()
    page.goto(launch_url(appliance, idp, "launch-one"))
    fill_idp_form(page, "dr.sso", PASSWORD)
    try:
        page.wait_for_url("**/pacs-viewer/viewer?StudyInstanceUIDs=*")
    except playwright_api.TimeoutError:
        raise AssertionError(f"stopped at {page.url}: {page.content()[:2000]}") from None
    assert parse_qs(urlsplit(page.url).query)["StudyInstanceUIDs"] == [one_study]
    page.wait_for_selector("canvas", timeout=60_000)  # the viewer, not the login page
    assert "/login" not in page.url
    rows = audit_rows(appliance, "smart_launch")
    assert rows[-1]["patient_id"] == ONE_STUDY_MRN and rows[-1]["username"] == "dr.sso"


@pytest.mark.browser
def test_smart_launch_without_studies_shows_the_worklist(setup, new_context) -> None:
    appliance, idp = setup
    page = new_context().new_page()
    page.goto(launch_url(appliance, idp, "launch-none"))
    fill_idp_form(page, "replay.user", PASSWORD)
    page.wait_for_url(f"**/?patient={NO_STUDY_MRN}")
    page.wait_for_selector(f"[data-testid=worklist-patient]:has-text('{NO_STUDY_MRN}')")
    me = page.evaluate("fetch('/api/auth/me').then(r => r.json())")
    assert me == {**me, "username": "replay.user", "role": "radiologist"}


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_smart_launch_from_unknown_issuer_fetches_nothing(setup) -> None:
    """An ``iss`` not in [smart] issuers is refused before any request is made to it."""
    appliance, _ = setup
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        iss = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        session = browserless_session()
        answer = session.get(f"{appliance.url}/smart/launch",
                             params={"iss": iss, "launch": "launch-one"})  # fmt: skip
    finally:
        server.shutdown()
    assert answer.status_code == 403 and answer.json()["error"] == "issuer_not_allowed"
    assert _Recorder.hits == []
    assert "issuer_not_allowed" in [
        r["detail"]["reason"] for r in audit_rows(appliance, "smart_refused")
    ]


def test_smart_replayed_state_is_refused(setup) -> None:
    appliance, idp = setup
    session = browserless_session()
    start = launch_url(appliance, idp, "launch-none")
    url = sign_in_at_idp(session, start, "replay.user", PASSWORD, appliance.url)
    assert session.get(url).status_code == 200
    again = session.get(url)
    assert again.status_code == 400 and again.json()["error"] == "unknown_state"
