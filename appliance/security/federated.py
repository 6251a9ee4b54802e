"""Users who sign in through another system (single sign-on, an EHR's SMART launch).

Such a user is an ordinary row of ``users`` bound to ``"issuer subject"`` of the ID token
(``sso_subject``), without a usable password: local accounts stay for break-glass, and a
provider's user can never take over a local account of the same name. The role comes from
a claim (groups, roles, ``fhirUser``) through the settings' map, at every sign-in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from appliance.config import Settings, parse_role_map
from appliance.db import now_iso
from appliance.errors import UserError
from appliance.security.oauth import OAuthError
from appliance.security.users import get_user, update_user, validate_username

NO_PASSWORD = "!federated"  # not a hash: no password ever verifies against it
# "Practitioner/123" or ".../fhir/Practitioner/123": also matched by its resource type.
_FHIR_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[^/]+$")


@dataclass(frozen=True)
class Policy:
    """How one provider's users become appliance users."""

    source: str  # "oidc" or "smart"
    username_claim: str
    role_claim: str
    role_map: list[tuple[str, str]]
    default_role: str
    auto_create: bool = True
    require_approval: bool = False

    @classmethod
    def from_settings(cls, settings: Settings, source: str) -> Policy:
        """The ``[oidc]`` or ``[smart]`` policy of ``settings``."""
        section = {"oidc": settings.oidc, "smart": settings.smart}[source]
        return cls(
            source=source,
            username_claim=section.username_claim,
            role_claim=section.role_claim,
            role_map=parse_role_map(section.role_map, source),
            default_role=section.default_role,
            auto_create=section.auto_create,
            require_approval=section.require_approval,
        )


def claim_values(value: Any) -> set[str]:
    """The strings a claim holds (a list or one value); FHIR references also by type."""
    items = value if isinstance(value, list) else [value]
    found = {str(item) for item in items if isinstance(item, str | int)}
    for item in list(found):
        match = _FHIR_REFERENCE.search(item)
        if match:
            found.add(match.group(1))
    return found


def map_role(policy: Policy, claims: dict[str, Any]) -> str | None:
    """The appliance role of the first map entry the role claim matches, else the default."""
    values = claim_values(claims.get(policy.role_claim))
    for value, role in policy.role_map:
        if value in values:
            return role
    return policy.default_role or None


def username_of(policy: Policy, claims: dict[str, Any]) -> str:
    """The user name the claims give; :class:`OAuthError` if it is not a valid one."""
    name = claims.get(policy.username_claim) or claims.get("email") or ""
    try:
        validate_username(str(name))
    except UserError:
        raise OAuthError(
            403,
            "invalid_username",
            f"The sign-in server's user name {str(name)[:64]!r} is not a valid appliance user "
            f"name; set [{policy.source}] username_claim to a claim with a simple name.",
        ) from None
    return str(name)


def sign_in(
    db: sqlite_utils.Database, policy: Policy, issuer: str, claims: dict[str, Any]
) -> tuple[str, str]:
    """The ``(username, role)`` of a verified ID token's user, creating or updating the row.

    Raises :class:`OAuthError` (403) when no role maps, the name belongs to a local account
    or another provider's user, new users may not be created, or the user waits for an
    admin's approval or is disabled.
    """
    username, subject = username_of(policy, claims), f"{issuer} {claims['sub']}"
    role = map_role(policy, claims)
    if role is None:
        raise OAuthError(
            403,
            "no_role",
            f"Your account has no appliance role (claim {policy.role_claim!r}); ask an admin "
            f"to map it in [{policy.source}] role_map.",
        )
    user = get_user(db, username)
    if user is None:
        return username, _create(db, policy, username, subject, role)
    if user["sso_subject"] != subject:
        raise OAuthError(
            403,
            "username_taken",
            f"The appliance account {username!r} is not linked to this sign-in; "
            "sign in with its password or ask an admin.",
        )
    if user["pending"]:
        raise OAuthError(403, "approval_pending", "Your account waits for an admin's approval.")
    if user["disabled"]:
        raise OAuthError(403, "account_disabled", "This account is disabled.")
    if user["role"] != role:
        update_user(db, username, role=role)
    return username, role


def _create(
    db: sqlite_utils.Database, policy: Policy, username: str, subject: str, role: str
) -> str:
    if not policy.auto_create:
        raise OAuthError(
            403, "not_registered", "You have no account here; ask an admin to let you in."
        )
    pending = int(policy.require_approval)
    db["users"].insert(
        {
            "username": username,
            "role": role,
            "password_hash": NO_PASSWORD,
            "disabled": pending,
            "pending": pending,
            "sso_subject": subject,
            "created_at": now_iso(),
            "last_login": None,
        }
    )
    if pending:
        raise OAuthError(
            403,
            "approval_pending",
            "Your account was created and waits for an admin's approval.",
        )
    return role
