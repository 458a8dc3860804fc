"""Builds the FastAPI application from the services. Serving it (sockets, signals) is the daemon's job."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp

from nexus import __version__
from nexus.api import errors, links
from nexus.api.deps import Services
from nexus.api.middleware import BodyLimit, TcpToken
from nexus.api.routers import admin, assets, firecracker, guest, health, settings, vms, workspaces
from nexus.api.schemas import ErrorOut

# Every status an operation may answer with besides its own success: 500 is a DriverError or an unexpected
# exception (errors.Unexpected), with the same body.
_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 500, 503)
}


def _is_mcp_path(path: str) -> bool:
    """The MCP endpoints mounted below: ``/mcp`` and ``/v1/vms/{ref}/mcp``."""
    return path == "/mcp" or (path.startswith("/v1/vms/") and path.endswith("/mcp"))


def create_app(
    services: Services,
    tcp_token: str | None = None,
    vm_mcp: ASGIApp | None = None,
    manage_mcp: ASGIApp | None = None,
) -> FastAPI:
    """The API app. With ``tcp_token``, connections over TCP must carry it as a bearer token. The MCP endpoints
    (ASGI apps, see ``nexus.mcp``) are mounted behind the same token check: ``vm_mcp`` at ``/v1/vms/{ref}/mcp``,
    ``manage_mcp`` at ``/mcp``; they cap request bodies themselves (a tool call carries a whole file)."""
    app = FastAPI(
        title="nexusd",
        version=__version__,
        description="Nexus daemon API: microVMs for AI agents.",
        responses=_ERROR_RESPONSES,
    )
    app.state.services = services
    errors.install(app)
    links.install(app)
    for module in (health, vms, guest, assets, firecracker, settings, admin, workspaces):
        app.include_router(module.router)
    for path, endpoint in (("/v1/vms/{ref}/mcp", vm_mcp), ("/mcp", manage_mcp)):
        if endpoint is not None:
            app.router.routes.append(Route(path, endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False))
    app.add_middleware(BodyLimit, exempt=_is_mcp_path)
    if tcp_token is not None:
        app.add_middleware(TcpToken, token=tcp_token)
    app.add_middleware(errors.Unexpected)  # last added is outermost: it also catches what the others raise
    return app
