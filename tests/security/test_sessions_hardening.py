"""Sessions, tokens and share links under attack (hardening issue, part 3).

Unit level: aiohttp's test client on a real temporary home (the fixtures of
``test_web_api``). The nginx side (redirect, Host check, headers, access log) runs the
real appliance at the end of the file.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import re
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator

import aiohttp
import jwt as pyjwt
import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.config import load_settings
from appliance.db import open_database
from appliance.security import audit, tls
from appliance.security.sessions import MAX_FAILURES_PER_USER
from appliance.security.tokens import ACCESS_TTL
from appliance.security.users import create_user, get_user, update_user, verify_password
from appliance.supervise.nginx import render_nginx_conf
from appliance.web.app import create_app
from appliance.web.keys import TOKENS
from tests.support.auth import PASSWORD, audit_events, bearer, forged, login
from tests.support.certificates import issue, key_pem, pem
from tests.support.running import Appliance, make_appliance, running_appliance
from tests.support.scripts import packaging_script
from tests.support.tools import require_tool
from tests.support.waiting import wait_for

fetch_ohif = packaging_script("fetch_ohif")
UNVERIFIED = ssl._create_unverified_context()  # the certificate is tested in test_tls


def _session_of(response) -> str:
    token = response.cookies["nn_session"].value
    return pyjwt.decode(token, options={"verify_signature": False})["sid"]


async def _token_in_its_second_half(client):
    """(the app's tokens, an access token of a new session of rad's that expires in 60 s,
    in the second half of its life); the client's own cookies are cleared."""
    first = await login(client)
    tokens = client.server.app[TOKENS]
    old, _ = tokens.issue_access("rad", "radiologist", _session_of(first), ttl=60)
    client.session.cookie_jar.clear()
    return tokens, old


# -- expired tokens -----------------------------------------------------------------------


async def test_an_expired_access_token_is_refused_as_cookie_and_as_bearer(client):
    first = await login(client)
    tokens = client.server.app[TOKENS]
    expired, _ = tokens.issue_access("rad", "radiologist", _session_of(first), ttl=-60)
    client.session.cookie_jar.clear()
    for headers in ({"Cookie": f"nn_session={expired}"}, {"Authorization": f"Bearer {expired}"}):
        resp = await client.get("/api/auth/me", headers=headers)
        assert resp.status == 401 and (await resp.json())["error"] == "token_expired"
        frame = "/api/pacs/dicom-web/studies/1.2/series/1.3/instances/1.4/frames/1"
        assert (await client.get(frame, headers=headers)).status == 401


async def test_a_live_cookie_in_the_second_half_of_its_life_is_renewed(client):
    tokens, old = await _token_in_its_second_half(client)
    resp = await client.get("/api/auth/me", headers={"Cookie": f"nn_session={old}"})
    assert resp.status == 200
    assert (
        tokens.verify(resp.cookies["nn_session"].value).expires_at > tokens.verify(old).expires_at
    )


# -- refresh CSRF -------------------------------------------------------------------------


async def test_refresh_without_csrf_cookie_and_header_is_refused(client):
    first = await login(client)
    refresh = first.cookies["nn_refresh"].value
    client.session.cookie_jar.clear()
    resp = await client.post("/api/auth/refresh", headers={"Cookie": f"nn_refresh={refresh}"})
    assert resp.status == 403 and (await resp.json())["error"] == "csrf_rejected"


# -- login throttling and password hashing --------------------------------------------------


async def test_parallel_wrong_passwords_check_at_most_the_limit(client, settings):
    """50 guesses at once: before, all 50 were checked (401); now 5 are, 45 get 429."""
    answers = await asyncio.gather(
        *(login(client, password=f"wrong password {n}") for n in range(50))
    )
    statuses = sorted(r.status for r in answers)
    checked = audit_events(settings, audit.LOGIN_FAILED)
    assert len(checked) == MAX_FAILURES_PER_USER
    assert statuses == [401] * MAX_FAILURES_PER_USER + [429] * (50 - MAX_FAILURES_PER_USER)


async def test_a_successful_login_does_not_count_as_a_failure(client):
    for _ in range(MAX_FAILURES_PER_USER + 2):
        assert (await login(client)).status == 200


async def test_passwords_are_hashed_with_argon2id(client, settings):
    db = open_database(settings.layout.database_file)
    assert get_user(db, "rad")["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def _scrypt_hash(password: str) -> str:
    """A hash as the appliance wrote them before Argon2id."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    fields = ["scrypt", "16384", "8", "1", base64.b64encode(salt), base64.b64encode(digest)]
    return "$".join(f if isinstance(f, str) else f.decode() for f in fields)


async def test_an_old_scrypt_hash_is_replaced_at_the_next_login(client, settings):
    db = open_database(settings.layout.database_file)
    db["users"].update("rad", {"password_hash": _scrypt_hash(PASSWORD)})
    assert (await login(client, password="wrong password!")).status == 401
    assert get_user(db, "rad")["password_hash"].startswith("scrypt$")
    assert (await login(client)).status == 200
    fresh = get_user(db, "rad")["password_hash"]
    assert fresh.startswith("$argon2id$") and verify_password(PASSWORD, fresh)
    assert (await login(client)).status == 200


# -- share links --------------------------------------------------------------------------


async def _share(client, username: str = "rad") -> dict:
    created = await client.post(
        "/api/shares", json={"study_uid": "1.2.3"}, headers=await bearer(client, username)
    )
    assert created.status == 201
    return await created.json()


async def _share_works(client, share: dict) -> bool:
    client.session.cookie_jar.clear()
    resp = await client.get(
        "/api/pacs/dicom-web/studies/1.2.3/metadata",
        headers={"Authorization": f"Bearer {share['token']}"},
    )
    return resp.status == 200


async def test_disabling_a_user_ends_their_share_links(client):
    share = await _share(client)
    assert await _share_works(client, share)
    admin = await bearer(client, "boss")
    await client.patch("/api/admin/users/rad", json={"disabled": True}, headers=admin)
    assert not await _share_works(client, share)
    opened = await client.get(f"/api/shares/open?token={share['token']}", allow_redirects=False)
    assert opened.status == 401
    listed = await (await client.get("/api/shares", headers=admin)).json()
    assert [s["revoked"] for s in listed["items"]] == [True]


async def test_demoting_a_user_to_a_role_that_cannot_share_ends_their_links(client):
    share, kept = await _share(client, "rad"), await _share(client, "boss")
    admin = await bearer(client, "boss")
    patched = await client.patch(
        "/api/admin/users/rad", json={"role": "technologist"}, headers=admin
    )
    assert patched.status == 200
    assert not await _share_works(client, share)
    assert await _share_works(client, kept)


async def test_a_share_of_a_user_disabled_before_the_upgrade_is_refused(client, settings):
    share = await _share(client)
    db = open_database(settings.layout.database_file)
    db["users"].update("rad", {"disabled": 1})  # as an older version left it: share unrevoked
    assert not await _share_works(client, share)


def test_a_user_is_disabled_together_with_the_end_of_their_links_or_not_at_all(db):
    """A failure while ending the links (here a trigger refusing it, as a full disk would)
    leaves the user as they were: the change and the revocation are one transaction."""
    create_user(db, "rad", "radiologist", PASSWORD)
    db.execute(
        "INSERT INTO shares (id, study_uid, created_by, created_at, expires_at) "
        "VALUES ('s1', '1.2.3', 'rad', '2026-01-01T00:00:00+00:00', '2999-01-01T00:00:00+00:00')"
    )
    db.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON shares BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    with pytest.raises(sqlite3.IntegrityError):
        update_user(db, "rad", disabled=True)
    assert get_user(db, "rad")["disabled"] == 0


async def test_disabling_with_the_cli_ends_share_links(client, settings):
    share = await _share(client)
    result = CliRunner().invoke(cli, ["user", "disable", "rad", "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    assert not await _share_works(client, share)


async def test_share_links_use_the_origin_users_reached(client, settings):
    share = await _share(client)
    origin = f"http://{client.server.host}:{client.server.port}"
    assert share["url"].startswith(f"{origin}/api/shares/open?")


async def test_share_links_use_the_configured_public_url(aiohttp_client, settings):

    proxied = await aiohttp_client(
        create_app(settings.with_values({"web.public_url": "https://pacs.clinic.example/"}))
    )
    share = await _share(proxied)
    assert share["url"].startswith("https://pacs.clinic.example/api/shares/open?token=")


# -- an idle viewer ----------------------------------------------------------------------


def test_an_open_viewer_renews_its_cookie_before_it_expires():
    """OHIF's config pings the session check more often than half a token's life."""
    stubs = (
        "const calls = [];\n"
        "const window = {fetch: (url, options) => { calls.push([url, options]);"
        " return Promise.resolve(); }, setInterval: (fn, ms) => { calls.push(ms); fn(); }};\n"
    )
    script = stubs + fetch_ohif.render_app_config() + "\nconsole.log(JSON.stringify(calls));"
    run = subprocess.run([require_tool("node", "nodejs"), "-e", script],
                         capture_output=True, text=True, check=True, timeout=30)  # fmt: skip
    every, (url, options) = json.loads(run.stdout)
    assert every < ACCESS_TTL * 1000 / 2 and url == "/api/auth/check"
    assert options == {"credentials": "same-origin", "cache": "no-store"}


async def test_the_session_check_renews_a_cookie_in_the_second_half_of_its_life(client):
    tokens, old = await _token_in_its_second_half(client)
    resp = await client.get("/api/auth/check", headers={"Cookie": f"nn_session={old}"})
    assert resp.status == 204
    assert tokens.verify(resp.cookies["nn_session"].value).expires_at > time.time() + 600


# -- logout -------------------------------------------------------------------------------


async def test_logout_clears_the_site_data(client):
    resp = await client.post("/api/auth/logout", headers=await bearer(client))
    assert resp.status == 204
    assert resp.headers["Clear-Site-Data"] == '"cache", "cookies", "storage"'


# -- nginx: HTTPS by default, Host check, headers, access log (the real appliance) -----------


def test_plain_http_redirects_by_default(tmp_path):
    assert load_settings(tmp_path, environ={}).web.redirect_to_https is True


def test_hsts_is_sent_only_with_a_clinic_certificate(tmp_path):
    settings = make_appliance(tmp_path).settings
    layout = settings.layout
    assert "Strict-Transport-Security" not in render_nginx_conf(settings).read_text()
    clinic = issue("pacs.clinic.example", names=("pacs.clinic.example",))
    tls.cert_file(layout).write_bytes(pem(clinic.cert))
    tls.key_file(layout).write_bytes(key_pem(clinic.key))
    text = render_nginx_conf(settings).read_text()
    https = text[text.index("ssl;\n") :]
    assert https.count("Strict-Transport-Security") == text.count("Strict-Transport-Security")
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in https
    unknown, plain, secure = re.findall(r"server_name (.*);", text)
    assert unknown == "_" and "pacs.clinic.example" in secure.split() == plain.split()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Appliance]:
    """The appliance as installed: plain HTTP redirects, names checked."""
    with running_appliance(
        tmp_path_factory.mktemp("https"), {"web.redirect_to_https": True}
    ) as running:
        yield running


def _https(appliance: Appliance, method: str, path: str, host: str = "127.0.0.1", **kw):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", appliance.settings.web.https_port, context=UNVERIFIED, timeout=10
    )
    conn.request(method, path, headers={"Host": host, **kw.pop("headers", {})}, **kw)
    resp = conn.getresponse()
    return resp.status, resp.headers, resp.read()


@pytest.mark.slow
def test_plain_http_answers_only_with_a_redirect(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.settings.web.http_port, timeout=10)
    for path in ("/", "/api/auth/login", "/pacs-viewer/"):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 301
        assert (
            resp.headers["Location"] == f"https://127.0.0.1:{served.settings.web.https_port}{path}"
        )
    assert served.health()[0] == 200  # `neuronova status` from this machine still works


@pytest.mark.slow
@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:8443"])
def test_a_foreign_host_name_gets_421(served, host):
    status, _, body = _https(served, "GET", "/api/health", host=host)
    assert status == 421 and json.loads(body)["error"] == "unknown_host"
    plain = http.client.HTTPConnection("127.0.0.1", served.settings.web.http_port, timeout=10)
    plain.request("GET", "/", headers={"Host": host})
    assert plain.getresponse().status == 421


@pytest.mark.slow
def test_the_appliance_names_are_accepted(served):
    for host in ["localhost", "127.0.0.1", "[::1]", *tls.host_names()]:
        assert _https(served, "GET", "/api/health", host=host)[0] == 200, host


@pytest.mark.slow
def test_every_page_carries_the_security_headers(served):
    for path in ("/", "/login", "/api/health", "/api/auth/login-redirect"):
        _, headers, _ = _https(served, "GET", path)
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self';" in csp and "frame-ancestors 'self'" in csp, path
        assert "Strict-Transport-Security" not in headers  # self-signed: no HSTS yet


def _admin_login(appliance: Appliance) -> tuple[str, str]:
    """Log in as the first admin over HTTPS: (session cookie, access token)."""
    body = json.dumps({"username": "admin", "password": appliance.admin_password})
    headers = {"Content-Type": "application/json"}
    status, answer, text = _https(appliance, "POST", "/api/auth/login", body=body, headers=headers)
    assert status == 200
    return answer["Set-Cookie"].split(";")[0], json.loads(text)["access_token"]


@pytest.mark.slow
def test_the_viewer_may_compile_its_wasm_decoders_and_start_workers(served):
    cookie, _ = _admin_login(served)
    status, headers, _ = _https(served, "GET", "/pacs-viewer/", headers={"Cookie": cookie})
    assert status == 200
    csp = headers["Content-Security-Policy"]
    assert "'wasm-unsafe-eval'" in csp and "worker-src 'self' blob:" in csp
    assert "object-src 'none'" in csp and "'sha256-" in csp


@pytest.mark.slow
def test_the_access_log_has_no_query_strings(served):
    secret = "SHARETOKEN" + "x" * 20
    _https(served, "GET", f"/api/shares/open?token={secret}")
    _https(served, "GET", "/api/pacs/dicom-web/studies?PatientName=DOE%5EJANE")
    log = served.settings.layout.log_dir / "nginx-access.log"
    lines = (
        '"GET /api/shares/open HTTP/1.1" 401',
        '"GET /api/pacs/dicom-web/studies HTTP/1.1" 401',
    )

    def logged() -> bool:  # each nginx worker buffers its lines (flush=2s): wait for both
        text = log.read_text() if log.exists() else ""
        return all(line in text for line in lines)

    wait_for(logged, 15, "nginx to write both requests to its access log")
    text = log.read_text()
    assert secret not in text and "PatientName" not in text and "DOE" not in text


@pytest.mark.slow
def test_parallel_wrong_passwords_through_nginx_are_throttled(served):
    """Both app processes share the count: 50 guesses at once, 5 checked, 45 refused."""

    async def guess(session: aiohttp.ClientSession, n: int) -> int:
        url = f"https://127.0.0.1:{served.settings.web.https_port}/api/auth/login"
        body = {"username": "guessed", "password": f"wrong password {n}"}
        async with session.post(url, json=body, ssl=False) as resp:
            return resp.status

    async def all_guesses() -> list[int]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(guess(session, n) for n in range(50)))

    statuses = asyncio.run(all_guesses())
    assert sorted(statuses) == [401] * MAX_FAILURES_PER_USER + [429] * 45
    db = open_database(served.settings.layout.database_file)
    assert len(audit.recent(db, event=audit.LOGIN_FAILED)) == MAX_FAILURES_PER_USER


@pytest.mark.slow
def test_an_expired_cookie_is_refused_by_the_frame_gate_and_the_app(served):
    _, token = _admin_login(served)
    sid = pyjwt.decode(token, options={"verify_signature": False})["sid"]
    cookie = {"Cookie": f"nn_session={forged(served, sid=sid, exp=int(time.time()) - 60)}"}
    frame = "/api/pacs/dicom-web/studies/1.2/series/1.3/instances/1.4/frames/1"
    for path in (frame, "/api/pacs/dicom-web/studies", "/api/auth/check"):
        status, _, text = _https(served, "GET", path, headers=cookie)
        assert status == 401 and json.loads(text)["error"] == "token_expired", path
