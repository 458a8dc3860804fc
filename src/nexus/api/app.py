"""Builds the FastAPI application from the services. Serving it (sockets, signals) is the daemon's job."""

from __future__ import annotations

from fastapi import FastAPI

from nexus import __version__
from nexus.api import errors
from nexus.api.deps import Services
from nexus.api.middleware import BodyLimit, TcpToken
from nexus.api.routers import assets, firecracker, guest, health, settings, vms
from nexus.api.schemas import ErrorOut

_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 422, 503)
}


def create_app(services: Services, tcp_token: str | None = None) -> FastAPI:
    """The API app. With ``tcp_token``, connections over TCP must carry it as a bearer token."""
    app = FastAPI(
        title="nexusd",
        version=__version__,
        description="Nexus daemon API: microVMs for AI agents.",
        responses=_ERROR_RESPONSES,
    )
    app.state.services = services
    errors.install(app)
    for module in (health, vms, guest, assets, firecracker, settings):
        app.include_router(module.router)
    app.add_middleware(BodyLimit)
    if tcp_token is not None:
        app.add_middleware(TcpToken, token=tcp_token)
    return app
