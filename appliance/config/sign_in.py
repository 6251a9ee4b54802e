"""``[oidc]`` and ``[smart]``: the two ways users sign in through another system."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from appliance.config.declare import Section, setting
from appliance.config.sections import TOKEN_AUTH_METHODS
from appliance.errors import ConfigError
from appliance.roles import ROLES


def parse_role_map(text: str, section: str = "oidc") -> list[tuple[str, str]]:
    """``"value = role, value2 = role2"`` as ``[(value, role), ...]``, in order.

    :class:`ConfigError` naming ``[section] role_map`` for an item without ``=`` or with a
    role that is not one of the appliance's.
    """
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, sep, role = (part.strip() for part in item.rpartition("="))
        if not sep or not value or role not in ROLES:
            raise ConfigError(
                f"[{section}] role_map: {item!r} must be 'claim value = role' with a role of "
                f"{', '.join(ROLES)}"
            )
        pairs.append((value, role))
    return pairs


def _check_roles(section: str, role_map: str, default_role: str) -> None:
    """The checks ``[oidc]`` and ``[smart]`` share: the role map and the default role."""
    parse_role_map(role_map, section)
    if default_role and default_role not in ROLES:
        raise ConfigError(
            f"[{section}] default_role: {default_role!r} is not a role ({', '.join(ROLES)})"
        )


def _check_issuers(setting: str, urls: list[str]) -> None:
    """Each of ``urls`` (the value of ``setting``) is an https:// or http:// URL.

    http:// is accepted for a provider on this machine: the tests' provider is
    ``http://localhost:PORT``, another site as seen from an appliance at 127.0.0.1. It is
    not limited to loopback, so a clinic's existing http:// configuration still starts;
    the message says what http:// costs.
    """
    for url in urls:
        if url and not url.startswith(("https://", "http://")):
            raise ConfigError(
                f"{setting}: {url!r} must start with https:// or http:// (use http:// only "
                "for a provider on this machine: it sends sign-in codes and tokens unencrypted)"
            )


@dataclass(frozen=True)
class OidcSettings(Section):
    """``[oidc]``: staff sign-in through an OpenID Connect provider."""

    table = "oidc"

    issuer: str = setting("", "OpenID Connect issuer URL for staff sign-in")
    client_id: str = setting("", "Client id registered at the provider")
    token_auth: str = setting(
        "client_secret_basic",
        "How the client secret goes to the token endpoint: client_secret_basic (header) "
        "or client_secret_post (form), as registered at the provider",
        choices=TOKEN_AUTH_METHODS,
    )
    display_name: str = setting("single sign-on", "Button text: Sign in with ...")
    scopes: str = setting("openid profile email", "Scopes asked for (space-separated)")
    username_claim: str = setting("preferred_username", "Claim that names the user")
    role_claim: str = setting("groups", "Claim holding groups or roles")
    role_map: str = setting(
        "", "Claim value = appliance role, comma-separated (the first that matches wins)"
    )
    default_role: str = setting("", "Role when none maps (empty: refuse)")
    auto_create: bool = setting(True, "Create users at first sign-in")
    require_approval: bool = setting(
        False, "New single sign-on users wait until an admin enables them"
    )

    def check(self) -> None:
        _check_roles(self.table, self.role_map, self.default_role)
        _check_issuers("[oidc] issuer", [self.issuer])

    @property
    def enabled(self) -> bool:
        """Whether staff may sign in with the OpenID Connect provider."""
        return bool(self.issuer and self.client_id)


@dataclass(frozen=True)
class SmartSettings(Section):
    """``[smart]``: SMART App Launch from an EHR."""

    table = "smart"
    # Not settings: an EHR's users are created at their first launch, never held back.
    auto_create: ClassVar[bool] = True
    require_approval: ClassVar[bool] = False

    issuers: str = setting("", "EHR FHIR base URLs that may launch the app")
    client_id: str = setting("", "Client id registered at the EHR")
    token_auth: str = setting(
        "client_secret_basic",
        "client_secret_basic or client_secret_post (OpenEMR's confidential apps: post)",
        choices=TOKEN_AUTH_METHODS,
    )
    identifier_system: str = setting(
        "", "Patient.identifier system whose value is the DICOM Patient ID (empty: the first)"
    )
    username_claim: str = setting("preferred_username", "Claim naming the EHR user")
    role_claim: str = setting("fhirUser", "Claim the role is mapped from")
    role_map: str = setting("", "Claim value = role, comma-separated")
    default_role: str = setting("", "Role when none maps (or empty)")

    def check(self) -> None:
        _check_roles(self.table, self.role_map, self.default_role)
        _check_issuers("[smart] issuers", self.issuer_list)

    @property
    def issuer_list(self) -> list[str]:
        """``[smart] issuers`` as a list, without trailing slashes."""
        return [u.strip().rstrip("/") for u in self.issuers.replace(",", " ").split()]
