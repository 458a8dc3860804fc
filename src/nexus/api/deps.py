"""How handlers reach the services: one container on ``app.state``, read through FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from nexus.services import AssetService, SettingsService, VmService
from nexus.services.firecracker import FirecrackerService
from nexus.services.guest import GuestService


@dataclass(frozen=True, slots=True)
class Services:
    vms: VmService
    settings: SettingsService
    assets: AssetService
    guest: GuestService
    firecracker: FirecrackerService


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def _vms(request: Request) -> VmService:
    svc: Services = request.app.state.services
    return svc.vms


async def _settings(request: Request) -> SettingsService:
    svc: Services = request.app.state.services
    return svc.settings


async def _assets(request: Request) -> AssetService:
    svc: Services = request.app.state.services
    return svc.assets


async def _guest(request: Request) -> GuestService:
    svc: Services = request.app.state.services
    return svc.guest


async def _firecracker(request: Request) -> FirecrackerService:
    svc: Services = request.app.state.services
    return svc.firecracker


Firecracker = Annotated[FirecrackerService, Depends(_firecracker)]
Assets = Annotated[AssetService, Depends(_assets)]
Guest = Annotated[GuestService, Depends(_guest)]
Vms = Annotated[VmService, Depends(_vms)]
SettingsDep = Annotated[SettingsService, Depends(_settings)]
ServicesDep = Annotated[Services, Depends(services)]
