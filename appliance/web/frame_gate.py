"""The frame gate: the app's lean check for single-frame DICOMweb reads.

A viewer fetches a series one frame per request (OHIF: 300 requests for a 300-slice
CT), so ``.../instances/{uid}/frames/{n}`` is the gateway's hot path. nginx sends those
GET and HEAD requests here rather than to the aiohttp application. The gate runs inside
every app process, on ``127.0.0.1:gate_port`` (``SO_REUSEPORT``, like the app), and uses
the app's own token service, session store, database and gateway rules:

* the path must be exactly one frame of an instance
  (:func:`~appliance.web.gateway.parse_single_frame`: UIDs of digits and dots, at most 64
  characters, no query, nothing encoded);
* the token (bearer or session cookie) is checked with
  :func:`~appliance.web.auth.check_token`: pinned algorithm, signature, claims, a live
  session or share, read from the database on every request, so a logout or revocation
  takes effect at once;
* the role must be a staff role, and a share link must name the requested study;
* ``Accept`` must be satisfied by the prepared HTJ2K frame file, and that file must exist.

Then the answer is an empty 200 with ``X-Accel-Redirect`` to the file, as from the app,
and the session's first read of the study is audited as by the app (one dict lookup per
frame after that; :class:`~appliance.security.audit.ReadLedger`).

Anything off that path (a rejection, which needs an audit row and a JSON error; a
cookie token due for renewal; a frame with no prepared file; another ``Accept``) is
handed to the full application unchanged: the gate answers ``X-Accel-Redirect:
/internal-app/`` and nginx replays the original request to the aiohttp app, which decides
as it always has. The gate can only say yes sooner; every no comes from the app.

Why not an aiohttp handler: on this 2-core machine the aiohttp request machinery (request
and response objects, router, middlewares, header serialization) cost about 0.3 ms of CPU
per frame, which capped the gateway at about 4,300 frames/s through nginx; the checks
themselves are a small part of that. ``docs/frames.md`` has the measurements.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httptools
from aiohttp import web

from appliance import internal_locations
from appliance.errors import PortInUseError
from appliance.web.auth import (
    SESSION_COOKIE,
    STAFF,
    Identity,
    Rejected,
    bearer_token,
    check_token,
    needs_renewal,
)
from appliance.web.dicomweb import ROOT, audit_read, prepared_frame
from appliance.web.errors import error_body
from appliance.web.gateway import parse_single_frame
from appliance.web.keys import FRAMES_DIR, METRICS, READS, SETTINGS

log = logging.getLogger("neuronova.web")

HAND_TO_APP = internal_locations.APP + "/"
MAX_HEADER_BYTES = 32 * 1024
_WANTED = frozenset({b"authorization", b"cookie", b"accept", b"x-forwarded-for"})
_PREFIX = ROOT + "/"


def _response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _json_error(status: int, phrase: str, error: str, message: str) -> bytes:
    body = json.dumps(error_body(status, error, message)).encode()
    return _response(f"{status} {phrase}", {"Content-Type": "application/json"}, body)


def accel_response(uri: str) -> bytes:
    """An empty 200 that has nginx serve ``uri`` (validated, header-safe) internally."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Accel-Redirect: %s\r\n\r\n" % uri.encode()


HANDED_TO_APP = accel_response(HAND_TO_APP)
METHOD_NOT_ALLOWED = _json_error(
    405, "Method Not Allowed", "method_not_allowed", "Frames are read with GET or HEAD."
)
BAD_REQUEST = _json_error(400, "Bad Request", "bad_request", "Malformed HTTP request.")
HEADERS_TOO_LARGE = _json_error(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    "The request headers are too large.",
)


def session_cookie(header: bytes) -> str | None:
    """The session cookie's value in a ``Cookie`` header, if it is there once."""
    values = [
        value.strip()
        for name, _, value in (part.partition(b"=") for part in header.split(b";"))
        if name.strip() == SESSION_COOKIE.encode()
    ]
    return values[0].decode("latin-1") if len(values) == 1 else None


class FrameGate:
    """The decision for one request: where nginx should take it.

    ``served`` and ``handed`` count the answers: plain ints, which ``/api/metrics`` reads
    (:meth:`appliance.metrics.Tally.watch`), so counting costs the hot path next to nothing.
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.frames_dir = app[FRAMES_DIR]
        self.reads = app[READS]
        self.served = 0
        self.handed = 0

    def answer(self, method: bytes, url: bytes, headers: dict[bytes, bytes]) -> bytes:
        """The raw HTTP response for a request nginx forwarded."""
        if method not in (b"GET", b"HEAD"):
            return METHOD_NOT_ALLOWED
        uri = self.frame_file(url.decode("latin-1"), headers)
        if uri:
            self.served += 1
            return accel_response(uri)
        self.handed += 1
        return HANDED_TO_APP

    def frame_file(self, url: str, headers: dict[bytes, bytes]) -> str | None:
        """The internal URI of the frame file, if every check passes; else ``None``."""
        target = parse_single_frame(url[len(_PREFIX) :]) if url.startswith(_PREFIX) else None
        if target is None:
            return None
        who = self.caller(headers)
        if who is None or not (
            target.study == who.claims.study if who.claims.is_share else who.role in STAFF
        ):
            return None
        accept = headers.get(b"accept", b"").decode("latin-1")
        uri = prepared_frame(self.frames_dir, target, accept)
        if uri is not None:  # nginx's address header (the gate listens on loopback only)
            client = headers.get(b"x-forwarded-for", b"").decode("latin-1")
            audit_read(self.reads, who, target, client)
        return uri

    def caller(self, headers: dict[bytes, bytes]) -> Identity | None:
        """Who sent the request, if the app would admit them without more ado."""
        authorization = headers.get(b"authorization")
        if authorization is not None:
            token, via_cookie = bearer_token(authorization.decode("latin-1")), False
            if token is None:
                return None
        else:
            cookie = session_cookie(headers.get(b"cookie", b""))
            if not cookie:
                return None
            token, via_cookie = cookie, True
        try:
            who = check_token(self.app, token, via_cookie)
        except Rejected:
            return None
        if via_cookie and not who.claims.is_share and needs_renewal(who.claims):
            return None  # the app renews the cookie
        return who


class TooLarge(Exception):
    """The request line and headers exceed :data:`MAX_HEADER_BYTES`."""


class GateProtocol(asyncio.Protocol):
    """HTTP/1.1 from nginx's keep-alive upstream connections, parsed with httptools."""

    def __init__(self, gate: FrameGate) -> None:
        self.gate = gate
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.ambiguous = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            too_large = isinstance(exc.__context__, TooLarge)
            self._send(HEADERS_TOO_LARGE if too_large else BAD_REQUEST, close=True)
        except httptools.HttpParserError:
            self._send(BAD_REQUEST, close=True)
        except httptools.HttpParserUpgrade:
            # The request was answered (on_message_complete); what follows an Upgrade is
            # not HTTP/1.1, so the connection ends here.
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        name = name.lower()
        if name in _WANTED:
            self.ambiguous |= name in self.headers
            self.headers[name] = value

    def _count(self, size: int) -> None:
        """Stop reading a request head larger than nginx would ever send."""
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            raise TooLarge

    def on_message_complete(self) -> None:
        response = HANDED_TO_APP if self.ambiguous else self._answer()
        self._send(response, close=not self.parser.should_keep_alive())
        self._reset()

    def _answer(self) -> bytes:
        """The gate's answer; when one of its checks fails, logged and handed to the app."""
        try:
            return self.gate.answer(self.parser.get_method(), self.url, self.headers)
        except Exception:
            url = self.url[:200].decode("latin-1")
            log.exception("frame gate: a check failed on %s; handed to the app", url)
            return HANDED_TO_APP

    def _send(self, response: bytes, close: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(response)
        if close:
            self.transport.close()


async def frame_gate_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve the frame gate on ``[internal] listen:gate_port`` for the app's lifetime.

    Needs the app's database, token and session stores (a later cleanup context than
    the one that opens them).
    """
    host, port = app[SETTINGS].internal.listen, app[SETTINGS].internal.gate_port
    gate = FrameGate(app)
    tally = app[METRICS]
    approved = {"route": "frame_gate", "status": "200"}
    tally.watch("http_requests_total", approved, lambda: gate.served)
    tally.watch("frame_gate_handed_to_app_total", {}, lambda: gate.handed)
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(lambda: GateProtocol(gate), host, port, reuse_port=True)
    except OSError as exc:
        raise PortInUseError(
            f"the frame gate cannot listen on {host}:{port} ({exc.strerror}); "
            "set [internal] gate_port in the settings to a free port"
        ) from None
    log.info("frame gate listening on %s:%d", host, port)
    yield
    server.close()
    await server.wait_closed()
