"""HTTP requests to the appliance's own loopback services, never through a proxy.

``urllib.request.urlopen`` sends every request to the proxy named in ``http_proxy`` (a
clinic's environment often sets one), Orthanc's credentials included. Loopback calls
must reach loopback: this opener has no proxy handler. (aiohttp's client ignores the
environment unless ``trust_env=True``, which the appliance never sets.)
"""

from __future__ import annotations

import urllib.request
from http.client import HTTPResponse

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen(request: urllib.request.Request | str, timeout: float) -> HTTPResponse:
    """``urllib.request.urlopen`` without any proxy; raises the same errors."""
    return _OPENER.open(request, timeout=timeout)
