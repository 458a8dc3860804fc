"""Builds the FastAPI application from the services. Serving it (sockets, signals) is the daemon's job."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp

from nexus import __version__
from nexus.api import errors, links
from nexus.api.audit import AuditTrail
from nexus.api.cache import ResponseCache
from nexus.api.deps import Services
from nexus.api.middleware import Access, BodyLimit, is_archive_path, is_mcp_path
from nexus.api.routers import (
    admin,
    archive,
    assets,
    audit,
    egress,
    firecracker,
    guest,
    health,
    policies,
    pools,
    processes,
    secrets,
    settings,
    terminals,
    tokens,
    vms,
    workspaces,
)
from nexus.schemas import ErrorOut

# Every status an operation may answer with besides its own success: 500 is a DriverError or an unexpected
# exception (errors.Unexpected), with the same body.
_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 422, 500, 503)
}


def create_app(
    services: Services,
    tcp_token: str | None = None,
    vm_mcp: ASGIApp | None = None,
    manage_mcp: ASGIApp | None = None,
    browser_check: Callable[[str | None, str | None], str | None] | None = None,
) -> FastAPI:
    """The API app. Over TCP a request needs ``tcp_token`` (the admin token: everything but host paths) or an agent
    token (its VM's MCP endpoint only), see ``api.middleware.Access``. The MCP endpoints (ASGI apps, see
    ``nexus.mcp``) are mounted behind the same check: ``vm_mcp`` at ``/v1/vms/{ref}/mcp``, ``manage_mcp`` at
    ``/mcp``; they cap request bodies themselves (a tool call carries a whole file). ``browser_check(host,
    origin)`` says why a browser page may not open a WebSocket (a terminal), or None (None: no page may)."""
    app = FastAPI(
        title="nexusd",
        version=__version__,
        description="Nexus daemon API: microVMs for AI agents.",
        responses=_ERROR_RESPONSES,
    )
    app.state.services = services
    app.state.listings = ResponseCache()
    app.state.browser_check = browser_check
    errors.install(app)
    links.install(app)
    for module in (
        health,
        vms,
        guest,
        archive,
        processes,
        assets,
        firecracker,
        settings,
        admin,
        workspaces,
        tokens,
        policies,
        pools,
        secrets,
        audit,
        egress,
        terminals,
    ):
        app.include_router(module.router)
    for path, endpoint in (("/v1/vms/{ref}/mcp", vm_mcp), ("/mcp", manage_mcp)):
        if endpoint is not None:
            app.router.routes.append(Route(path, endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False))
    app.add_middleware(BodyLimit, exempt=lambda path: is_mcp_path(path) or is_archive_path(path))
    app.add_middleware(Access, admin_token=tcp_token, tokens=services.tokens)  # before any body is read
    app.add_middleware(AuditTrail, audit=services.audit, api=app)  # outside Access: sees its refusals
    app.add_middleware(errors.Unexpected)  # last added is outermost: it also catches what the others raise
    return app
