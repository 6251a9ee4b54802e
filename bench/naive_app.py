"""The reference that X-Accel-Redirect replaces: an aiohttp handler that checks the token
and sends the frame bytes itself.

Usage: ``python bench/naive_app.py --home HOME --port PORT [--reuse-port]`` (127.0.0.1;
frames.py starts as many copies on one port as the appliance runs app processes).

Per request it does the appliance's checks for a frame read: bearer token verified with
the same :class:`appliance.security.tokens.TokenService` and the home's signing key, the session
checked with the same :meth:`appliance.security.sessions.SessionStore.active` against the home's
database, role checked, path validated with the gateway's parser, ``Accept`` checked.
Then it reads the prepared frame file and answers with its bytes
(``web.Response(body=...)``, no sendfile). It leaves out the appliance's error middleware
and audit rows (written only on rejections), so if anything it is slightly cheaper than
the real app per request.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.db import open_database
from appliance.layout import HomeLayout
from appliance.security.keys import read_secret
from appliance.security.sessions import SessionStore
from appliance.security.tokens import TokenError, TokenService
from appliance.store.frame_files import BOUNDARY
from appliance.web.auth import STAFF
from appliance.web.gateway import (
    BadRequest,
    accepts_stored_htj2k,
    check_raw_path,
    frame_file_redirect,
    parse_path,
)

ROOT = "/api/pacs/dicom-web/"
CONTENT_TYPE = f'multipart/related; type="application/octet-stream"; boundary={BOUNDARY}'
SESSIONS = web.AppKey("sessions", SessionStore)
FRAMES = web.AppKey("frames", Path)


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    406: web.HTTPNotAcceptable,
}


def _fail(status: int, reason: str) -> web.HTTPException:
    return _ERRORS[status](text=reason)


def _authorize(request: web.Request) -> None:
    """The appliance's token, session and role checks for a DICOMweb read."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _fail(401, "missing_token")
    sessions = request.app[SESSIONS]
    try:
        claims = sessions.tokens.verify(token.strip())
    except TokenError as exc:
        raise _fail(401, exc.reason) from None
    if claims.is_share or sessions.active(claims.session or "") is None:
        raise _fail(401, "token_revoked")
    if claims.role not in STAFF:
        raise _fail(403, "role_denied")


def _frame_file(request: web.Request) -> Path:
    """The prepared frame file the request names (validated like the gateway does)."""
    try:
        check_raw_path(request.raw_path)
        target = parse_path(request.match_info["tail"])
    except BadRequest as exc:
        raise _fail(400, str(exc)) from None
    if target.action != "frames" or len(target.frames) != 1 or target.frame_action:
        raise _fail(404, "only single frames are served here")
    if not accepts_stored_htj2k(request.headers.get("Accept", "")):
        raise _fail(406, "not acceptable")
    return request.app[FRAMES] / frame_file_redirect(target).removeprefix("/internal-frames/")


async def frame(request: web.Request) -> web.Response:
    """Check the caller, then read the frame file and send its bytes from Python."""
    _authorize(request)
    path = _frame_file(request)
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise _fail(404, "no such frame") from None
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE,
                                            "Cache-Control": "private, max-age=86400"})  # fmt: skip


async def health(request: web.Request) -> web.Response:
    """Liveness, for the benchmark's start-up wait."""
    return web.Response(text="ok")


def create_app(home: Path) -> web.Application:
    """The naive app for one appliance home (its signing key, database and frames)."""
    layout = HomeLayout(home)
    app = web.Application()
    tokens = TokenService(read_secret(layout.jwt_key_file))
    app[SESSIONS] = SessionStore(open_database(layout.database_file), tokens)
    app[FRAMES] = layout.frames_dir
    app.router.add_get("/naive-health", health)
    app.router.add_get(ROOT + "{tail:.*}", frame)
    return app


def main(argv: list[str] | None = None) -> int:
    """Serve on 127.0.0.1:PORT until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reuse-port", action="store_true", help="share the port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    web.run_app(create_app(args.home.resolve()), host="127.0.0.1", port=args.port,
                reuse_port=args.reuse_port, access_log=None, print=None,
                shutdown_timeout=3)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
