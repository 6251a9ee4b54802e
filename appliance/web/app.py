"""The aiohttp application factory and the process that serves it on loopback."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from appliance.config import Settings
from appliance.db import open_database
from appliance.errors import PortInUseError
from appliance.ingest.intake import Ingest
from appliance.jobs.queue import create_queue
from appliance.metrics import Tally
from appliance.security.audit import ReadLedger
from appliance.security.keys import read_secret
from appliance.security.sessions import SessionStore
from appliance.security.tokens import TokenService
from appliance.web import (
    admin,
    dicomweb,
    health,
    login,
    metrics,
    queue,
    shares,
    smart,
    sso,
    studies,
)
from appliance.web.auth import auth_middleware
from appliance.web.errors import MALFORMED_REQUEST_LOG, error_middleware
from appliance.web.federation import federation_ctx
from appliance.web.fhir import PREFIX as FHIR_PREFIX
from appliance.web.fhir import create_fhir_app
from appliance.web.frame_gate import frame_gate_ctx
from appliance.web.ingest import PipelineIngest
from appliance.web.inputs import MAX_JSON_BODY, SERVER_OPTIONS
from appliance.web.keys import (
    DB,
    FRAMES_DIR,
    HEALTH,
    HTTP,
    INGEST,
    METRICS,
    QUEUE,
    READS,
    SESSIONS,
    SETTINGS,
    STARTED_AT,
    TOKENS,
)

log = logging.getLogger("neuronova.web")
ROUTE_TABLES = (
    health.routes,
    login.routes,
    sso.routes,
    smart.routes,
    dicomweb.routes,
    studies.routes,
    shares.routes,
    admin.routes,
    queue.routes,
    metrics.routes,
)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app database, open for the app's lifetime, with the token and session stores."""
    layout = app[SETTINGS].layout
    app[DB] = open_database(layout.database_file)
    app[TOKENS] = TokenService(read_secret(layout.jwt_key_file))
    app[SESSIONS] = SessionStore(app[DB], app[TOKENS])
    app[READS] = ReadLedger(app[DB])
    yield
    app[DB].close()


async def http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    """One HTTP client session (to Orthanc and for probes), closed at shutdown."""
    timeout = aiohttp.ClientTimeout(total=5)
    app[HTTP] = aiohttp.ClientSession(timeout=timeout)
    yield
    await app[HTTP].close()


async def queue_ctx(app: web.Application) -> AsyncIterator[None]:
    """The task queue the app enqueues work on."""
    app[QUEUE] = create_queue(app[SETTINGS])
    settings = app[SETTINGS]
    app[INGEST] = PipelineIngest(Ingest(settings, queue=app[QUEUE]), settings.dicom.overwrite)
    yield


def create_app(settings: Settings) -> web.Application:
    """Build the web application for ``settings``."""
    app = web.Application(
        middlewares=[metrics.metrics_middleware, error_middleware, auth_middleware],
        client_max_size=MAX_JSON_BODY,
    )
    app[SETTINGS] = settings
    app[STARTED_AT] = time.time()
    app[FRAMES_DIR] = str(settings.layout.frames_dir)
    app[HEALTH] = health.cached_health(app)
    app[METRICS] = Tally()
    app.cleanup_ctx.extend(
        [
            database_ctx,
            metrics.metrics_ctx,
            frame_gate_ctx,
            http_client_ctx,
            federation_ctx,
            queue_ctx,
        ]
    )
    for table in ROUTE_TABLES:
        app.add_routes(table)
    app.add_subapp(FHIR_PREFIX, create_fhir_app())
    return app


def serve(settings: Settings) -> None:
    """Serve the app on ``[internal] listen:app_port`` until SIGTERM or SIGINT.

    The port is opened with ``SO_REUSEPORT``, so ``app_processes`` copies share it and
    the kernel spreads nginx's connections over them.
    """
    host = settings.internal.listen
    logging.getLogger("aiohttp.server").addFilter(MALFORMED_REQUEST_LOG)
    log.info("web app listening on %s:%d", host, settings.internal.app_port)
    try:
        web.run_app(
            create_app(settings),
            host=host,
            port=settings.internal.app_port,
            reuse_port=True,
            access_log=None,
            print=None,
            shutdown_timeout=3,
            **SERVER_OPTIONS,
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise PortInUseError(
            f"the web app cannot listen on {host}:{settings.internal.app_port} (in use); "
            "set [internal] app_port in the settings to a free port"
        ) from None
