"""Users from single sign-on and SMART launches, and the store of sign-ins in flight, on a
real SQLite file (the end-to-end flows against the real provider: tests/security/test_sso.py)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from appliance.cli import cli as neuronova_cli
from appliance.config import load_settings
from appliance.db import open_database
from appliance.errors import ConfigError
from appliance.layout import HomeLayout
from appliance.security.federated import Policy, map_role, sign_in
from appliance.security.oauth import MAX_PENDING_PER_CLIENT, OAuthError, StateStore
from appliance.security.users import create_user, get_user, update_user, verify_password

ISSUER = "https://idp.example"
POLICY = Policy("oidc", "preferred_username", "groups", [("rads", "radiologist")], "")


def claims(name: str, *groups: str, sub: str | None = None) -> dict:
    return {"sub": sub or f"sub-{name}", "preferred_username": name, "groups": list(groups)}


def test_first_sign_in_creates_a_user_without_a_password(db) -> None:
    assert sign_in(db, POLICY, ISSUER, claims("ann", "rads")) == ("ann", "radiologist")
    user = get_user(db, "ann")
    assert user["sso_subject"] == f"{ISSUER} sub-ann" and not user["pending"]
    assert not verify_password("", user["password_hash"])


def test_approval_waits_for_an_admin(db) -> None:
    policy = Policy("oidc", "preferred_username", "groups", [("rads", "radiologist")], "",
                    require_approval=True)  # fmt: skip
    for _ in range(2):
        with pytest.raises(OAuthError) as refused:
            sign_in(db, policy, ISSUER, claims("bob", "rads"))
        assert refused.value.reason == "approval_pending"
    update_user(db, "bob", disabled=False)  # the admin's "Approve" (users page / PATCH)
    assert sign_in(db, policy, ISSUER, claims("bob", "rads")) == ("bob", "radiologist")


@pytest.mark.parametrize(
    ("policy", "who", "reason"),
    [
        (Policy("oidc", "preferred_username", "groups", [], "radiologist", auto_create=False),
         claims("cid", "rads"), "not_registered"),
        (POLICY, claims("dan", "guests"), "no_role"),
        (POLICY, claims("bad name!", "rads"), "invalid_username"),
    ],
)  # fmt: skip
def test_refusals(db, policy: Policy, who: dict, reason: str) -> None:
    with pytest.raises(OAuthError) as refused:
        sign_in(db, policy, ISSUER, who)
    assert refused.value.reason == reason


def test_local_account_and_other_subject_are_not_taken_over(db) -> None:
    create_user(db, "root", "admin", "a long enough password")
    sign_in(db, POLICY, ISSUER, claims("eve", "rads"))
    for who in (claims("root", "rads"), claims("eve", "rads", sub="someone-else")):
        with pytest.raises(OAuthError) as refused:
            sign_in(db, POLICY, ISSUER, who)
        assert refused.value.reason == "username_taken"


def test_role_follows_the_provider(db) -> None:
    policy = Policy("oidc", "preferred_username", "groups",
                    [("admins", "admin"), ("rads", "radiologist")], "technologist")  # fmt: skip
    assert sign_in(db, policy, ISSUER, claims("fay", "rads", "admins"))[1] == "admin"
    assert sign_in(db, policy, ISSUER, claims("fay", "rads"))[1] == "radiologist"
    assert sign_in(db, policy, ISSUER, claims("fay"))[1] == "technologist"
    assert get_user(db, "fay")["role"] == "technologist"


def test_fhir_user_maps_by_resource_type() -> None:
    policy = Policy("smart", "name", "fhirUser", [("Practitioner", "radiologist")], "")
    assert map_role(policy, {"fhirUser": "https://ehr/fhir/Practitioner/9"}) == "radiologist"
    assert map_role(policy, {"fhirUser": "Patient/9"}) is None


def test_state_is_single_use_and_bound_to_the_browser(db) -> None:
    store = StateStore(db)
    state, nonce, _ = store.begin("oidc", "browser-a", "10.0.0.1", ISSUER, "https://x/cb", "/")
    with pytest.raises(OAuthError) as other:
        store.take(state, "browser-b", "oidc")
    assert other.value.reason == "wrong_browser"
    state, nonce, _ = store.begin("oidc", "browser-a", "10.0.0.1", ISSUER, "https://x/cb", "/")
    assert store.take(state, "browser-a", "oidc").nonce == nonce
    with pytest.raises(OAuthError) as replay:
        store.take(state, "browser-a", "oidc")
    assert replay.value.reason == "unknown_state"


def test_state_expires_and_is_bounded(db) -> None:
    store = StateStore(db)
    state, _, _ = store.begin("oidc", "b", "10.0.0.2", ISSUER, "https://x/cb", "/")
    db.execute("UPDATE oauth_states SET expires_at = '2000-01-01T00:00:00+00:00'")
    db.conn.commit()
    with pytest.raises(OAuthError) as late:
        store.take(state, "b", "oidc")
    assert late.value.reason == "state_expired"
    for _ in range(MAX_PENDING_PER_CLIENT):
        store.begin("oidc", "b", "10.0.0.3", ISSUER, "https://x/cb", "/")
    with pytest.raises(OAuthError) as full:
        store.begin("oidc", "b", "10.0.0.3", ISSUER, "https://x/cb", "/")
    assert full.value.status == 429
    store.begin("oidc", "b", "10.0.0.4", ISSUER, "https://x/cb", "/")  # others still may


def test_client_secret_is_stored_private(home, runner: CliRunner) -> None:
    args = ["config", "client-secret", "oidc", "--home", str(home)]
    assert runner.invoke(neuronova_cli, args, input="s3cret value\n").exit_code == 0
    path = home / "secrets" / "oidc-client-secret"
    assert path.read_text() == "s3cret value" and path.stat().st_mode & 0o777 == 0o600
    empty = runner.invoke(neuronova_cli, args, input="\n")
    assert empty.exit_code == 2 and "Error: no secret on stdin" in empty.output
    assert runner.invoke(neuronova_cli, [*args, "--remove"]).exit_code == 0
    assert not path.exists()


def test_cli_lists_and_approves_a_pending_user(home, runner: CliRunner) -> None:
    db = open_database(HomeLayout(home).database_file)
    policy = Policy("oidc", "preferred_username", "groups", [("rads", "radiologist")], "",
                    require_approval=True)  # fmt: skip
    with pytest.raises(OAuthError):
        sign_in(db, policy, ISSUER, claims("gil", "rads"))
    listed = runner.invoke(neuronova_cli, ["user", "list", "--home", str(home)])
    assert re.search(r"^gil\s+radiologist\s+pending\s", listed.output, re.M), listed.output
    enabled = runner.invoke(neuronova_cli, ["user", "enable", "gil", "--home", str(home)])
    assert enabled.exit_code == 0
    assert sign_in(db, policy, ISSUER, claims("gil", "rads")) == ("gil", "radiologist")
    db.close()


def test_token_auth_must_be_a_method_a_client_registers_with(tmp_path) -> None:
    settings = load_settings(tmp_path, {"smart.token_auth": "client_secret_post"}, environ={})
    assert settings.smart.token_auth == "client_secret_post"
    with pytest.raises(ConfigError, match=r"\[oidc\] token_auth must be one of client_secret_"):
        load_settings(tmp_path, {"oidc.token_auth": "private_key_jwt"}, environ={})


@pytest.mark.parametrize(
    ("setting", "value", "shown"),
    [("oidc.issuer", "idp.example", "'idp.example'"),
     ("smart.issuers", "https://ehr.example/fhir, ftp://ehr.example", "'ftp://ehr.example'")],
)  # fmt: skip
def test_an_issuer_must_be_an_http_or_https_url_and_the_error_says_both(
    tmp_path, setting: str, value: str, shown: str
) -> None:
    """http:// is accepted (the tests' provider is http://localhost), so the message
    names it beside https:// and says what it costs."""
    with pytest.raises(ConfigError) as refused:
        load_settings(tmp_path, {setting: value}, environ={})
    section, key = setting.split(".")
    assert str(refused.value) == (
        f"[{section}] {key}: {shown} must start with https:// or http:// (use http:// only "
        "for a provider on this machine: it sends sign-in codes and tokens unencrypted)"
    )
    for accepted in ("https://idp.example", "http://localhost:8090"):
        load_settings(tmp_path, {setting: accepted}, environ={})
