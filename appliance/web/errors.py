"""One JSON shape for every error a client sees: ``{"status", "error", "message"}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("neuronova.web")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ErrorRenderer = Callable[[int, str, str], web.Response]
# A sub-application whose clients expect another error shape (FHIR's OperationOutcome)
# sets its renderer (status, code, message) -> response here; it then applies to every
# error under the sub-app's prefix, the parent's middlewares' errors included.
ERROR_RENDERER: web.AppKey[ErrorRenderer] = web.AppKey("error_renderer")


def _renderer(request: web.Request) -> ErrorRenderer | None:
    """The innermost :data:`ERROR_RENDERER` of the apps that routed ``request``
    (``request.config_dict`` would stop at the app whose middleware is running)."""
    for app in reversed(request.match_info.apps):
        if ERROR_RENDERER in app:
            return app[ERROR_RENDERER]
    return None


def error_body(status: int, error: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON object of an error (also written by the frame gate without aiohttp)."""
    return {"status": status, "error": error, "message": message, **extra}


def json_error(
    status: int, error: str, message: str, retry_after: int | None = None, **extra: Any
) -> web.Response:
    """A JSON error response; ``retry_after`` (seconds) also sets ``Retry-After``."""
    if retry_after is not None:
        extra["retry_after"] = retry_after
    response = web.json_response(error_body(status, error, message, **extra), status=status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


class ApiError(web.HTTPException):
    """An HTTP error with a machine-readable code and a human message, raised by handlers."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        self.status_code = status
        super().__init__()
        self.error, self.message, self.extra = error, message, extra


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into the JSON error shape (or the sub-app's
    :data:`ERROR_RENDERER`); never send a traceback."""
    render = _renderer(request)
    try:
        return await handler(request)
    except ApiError as exc:
        if render is not None:
            return render(exc.status_code, exc.error, exc.message)
        return json_error(exc.status_code, exc.error, exc.message, **exc.extra)
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        phrase = HTTPStatus(exc.status_code).phrase
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        return (render or json_error)(
            exc.status_code, code, f"{phrase}: {request.method} {request.path}"
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = "Internal error; the details are in the app log."
        return (render or json_error)(500, "internal_error", message)


class MalformedRequestLog(logging.Filter):
    """One line, not a traceback, for a request aiohttp cannot parse.

    aiohttp answers such a request (non-ASCII bytes in the URL, a bad method) with 400
    itself, then logs the parser's full traceback at ERROR: a stream of them is noise that
    hides real errors (about 840 in the fuzz run). Attached to ``aiohttp.server``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a parse failure as a WARNING line; pass every other record as it is."""
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "refused a malformed request with 400: %s %s"
            record.args = (type(exc).__name__, " ".join(str(exc.message).split())[:200])
            record.exc_info = record.exc_text = None
        return True


MALFORMED_REQUEST_LOG = MalformedRequestLog()
