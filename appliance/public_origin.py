"""Where users reach the appliance: the one answer for links handed to people and systems."""

import socket

from appliance.config import Settings


def public_origin(settings: Settings, browser_origin: str | None = None) -> str:
    """The origin (``scheme://host[:port]``, no trailing slash) users reach the appliance at.

    One fallback order, used for share links, the OIDC/SMART redirect URIs, the FHIR
    base and Endpoint address, and the Endpoint in pushed ImagingStudy resources:

    1. ``[web] public_url``, when set: the name the clinic gave the appliance (behind a
       proxy, a tunnel or a port mapping, only it is right).
    2. ``browser_origin``: the origin the browser used for the current request (the
       scheme it came by and the Host it sent, which nginx has checked against the
       server names). Another user is sent where this one already got through, and an
       identity provider's redirect comes back to the origin holding the sign-in cookie.
    3. Without a request (background work such as the FHIR push), HTTPS on this
       machine's fully qualified name at ``[web] https_port``; nginx always answers to
       that name.

    Parameters
    ----------
    settings
        The appliance's settings.
    browser_origin
        ``scheme://host[:port]`` of the request being answered, if any.
    """
    if settings.web.public_url:
        return settings.web.public_url.rstrip("/")
    if browser_origin:
        return browser_origin.rstrip("/")
    return f"https://{socket.getfqdn()}:{settings.web.https_port}"
