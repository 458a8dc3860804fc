"""How handlers reach the services: one container on ``app.state``, read through FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from nexus.services import SettingsService, VmService


@dataclass(frozen=True, slots=True)
class Services:
    vms: VmService
    settings: SettingsService
    driver_reason: str  # why this VMM driver (or none) was chosen, for /v1/health


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def _vms(request: Request) -> VmService:
    svc: Services = request.app.state.services
    return svc.vms


async def _settings(request: Request) -> SettingsService:
    svc: Services = request.app.state.services
    return svc.settings


Vms = Annotated[VmService, Depends(_vms)]
SettingsDep = Annotated[SettingsService, Depends(_settings)]
ServicesDep = Annotated[Services, Depends(services)]
