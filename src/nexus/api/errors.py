"""The ONE table from domain errors to HTTP status, and the error body every failure uses:
``{"error": {"code": "...", "message": "..."}}`` (plus ``request_id`` on a 5xx).

An exception no handler maps (a bug, an ``OSError`` a service let through) becomes the same body with status 500
and code ``internal``, by :class:`Unexpected`; its ``request_id`` is also in nexusd's log line for that error (with
the traceback), so a user's report can be matched to the log. The same goes for domain 5xx errors. A 405 carries
``Allow`` with every method the path takes.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus.domain import (
    Conflict,
    DriverError,
    Forbidden,
    GuestError,
    Invalid,
    InvalidState,
    NexusError,
    NotFound,
    TooLarge,
    Unavailable,
)
from nexus.schemas import describe_errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[NexusError], int] = {
    NotFound: 404,
    Forbidden: 403,
    InvalidState: 409,
    Conflict: 409,
    Invalid: 422,
    TooLarge: 413,
    GuestError: 422,
    Unavailable: 503,
    DriverError: 500,
    NexusError: 500,
}

# Edge-only failures that have no domain error (HTTP framing, auth).
CODE_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid",
}

_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

# An unexpected exception has no domain class: it goes out as NexusError's code, which clients map back to NexusError.
INTERNAL = NexusError.code


def error_body(code: str, message: str, request_id: str | None = None) -> dict[str, dict[str, str]]:
    detail = {"code": code, "message": message}
    if request_id is not None:
        detail["request_id"] = request_id
    return {"error": detail}


def error_response(status: int, code: str, message: str, request_id: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, request_id), status_code=status)


def status_for(exc: NexusError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def new_request_id() -> str:
    return secrets.token_hex(8)


def unexpected(exc: Exception, method: str, path: str) -> dict[str, str]:
    """Log ``exc`` (an exception no handler maps) with its traceback under a new request id; the error detail
    to send, carrying that id. An ``OSError`` says what failed (disk full, permission denied: the user can act on
    it); anything else is a bug and says only its type, the log has the rest."""
    request_id = new_request_id()
    log.error("request %s: %s %s failed: %s: %s", request_id, method, path, type(exc).__name__, exc, exc_info=exc)
    what = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else type(exc).__name__
    message = f"internal error ({what}); nexusd's log has the details under request {request_id}"
    return error_body(INTERNAL, message, request_id)["error"]


def _describe_validation(exc: RequestValidationError) -> str:
    body = "request body must be a JSON object (Content-Type: application/json)"
    return describe_errors(exc.errors(), body) or "invalid request"


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """Every method some route of ``app`` takes at ``scope``'s path. Starlette's own 405 names only the first
    route whose path matched, while a path such as ``/v1/vms/{ref}`` is served by one route per method. Each method
    is tried through the routes' public ``matches`` (FastAPI nests included routers in route types of its own)."""
    return [
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)
    ]


class Unexpected:
    """ASGI middleware, the outermost of the app's own: an exception nothing mapped becomes the documented 500
    error body (see :func:`unexpected`) instead of Starlette's plain-text "Internal Server Error".

    Once a response has started there is no status left to change: the exception is logged the same way and
    re-raised so the server cuts the connection (streams end with an error event before that, see
    ``api.streaming``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            detail = unexpected(exc, scope["method"], scope["path"])
            if started:
                raise
            response = JSONResponse({"error": detail}, status_code=500)
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """Register the handlers. :class:`Unexpected` is added by ``create_app`` after every other middleware, so that
    it is the outermost and sees what they raise too."""

    @app.exception_handler(NexusError)
    async def _domain(request: Request, exc: NexusError) -> JSONResponse:
        status = status_for(exc)
        if status < 500:
            return error_response(status, exc.code, exc.message)
        request_id = new_request_id()
        log.warning("request %s: %s %s: %s: %s", request_id, request.method, request.url.path, exc.code, exc.message)
        return error_response(status, exc.code, exc.message, request_id)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        if any(err.get("type") == "json_invalid" for err in exc.errors()):
            return error_response(400, "bad_request", "request body is not valid JSON")
        return error_response(422, "invalid", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODE_BY_STATUS.get(exc.status_code, "error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.scope))
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(headers)
        return response
