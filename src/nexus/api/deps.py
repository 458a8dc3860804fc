"""How handlers reach the services: one container on ``app.state``, read through FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from nexus.api.cache import ResponseCache
from nexus.domain import Transport
from nexus.services import AssetService, DriveService, NetworkService, SettingsService, SnapshotService, VmService
from nexus.services.audit import AuditService
from nexus.services.checkpoints import CheckpointService
from nexus.services.egress import EgressService
from nexus.services.firecracker import FirecrackerService
from nexus.services.guest import GuestService
from nexus.services.lifetimes import LifetimeService
from nexus.services.policy import PolicyService
from nexus.services.pools import PoolService
from nexus.services.secrets import SecretService
from nexus.services.tokens import TokenService


@dataclass(frozen=True, slots=True)
class Services:
    vms: VmService
    settings: SettingsService
    assets: AssetService
    guest: GuestService
    firecracker: FirecrackerService
    network: NetworkService
    drives: DriveService
    snapshots: SnapshotService
    checkpoints: CheckpointService
    lifetimes: LifetimeService
    pools: PoolService
    tokens: TokenService
    policy: PolicyService
    audit: AuditService
    secrets: SecretService
    egress: EgressService


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def listings(request: Request) -> ResponseCache:
    cache: ResponseCache = request.app.state.listings
    return cache


async def transport(request: Request) -> Transport:
    """How this request reached nexusd, as ``api.middleware.Access`` recorded it (TCP when it did not: the safe
    side)."""
    found = request.scope.get("state", {}).get("transport")
    return found if isinstance(found, Transport) else Transport.TCP


def _one(name: str) -> Callable[[Services], Coroutine[Any, Any, Any]]:
    """A dependency giving one service. Async, so FastAPI runs it on the loop rather than in a worker thread."""

    async def pick(svc: Services = Depends(services)) -> Any:
        return getattr(svc, name)

    return pick


ServicesDep = Annotated[Services, Depends(services)]
Vms = Annotated[VmService, Depends(_one("vms"))]
SettingsDep = Annotated[SettingsService, Depends(_one("settings"))]
Assets = Annotated[AssetService, Depends(_one("assets"))]
Guest = Annotated[GuestService, Depends(_one("guest"))]
Firecracker = Annotated[FirecrackerService, Depends(_one("firecracker"))]
Network = Annotated[NetworkService, Depends(_one("network"))]
Drives = Annotated[DriveService, Depends(_one("drives"))]
Snapshots = Annotated[SnapshotService, Depends(_one("snapshots"))]
Checkpoints = Annotated[CheckpointService, Depends(_one("checkpoints"))]
Tokens = Annotated[TokenService, Depends(_one("tokens"))]
Policies = Annotated[PolicyService, Depends(_one("policy"))]
Pools = Annotated[PoolService, Depends(_one("pools"))]
Audit = Annotated[AuditService, Depends(_one("audit"))]
Secrets = Annotated[SecretService, Depends(_one("secrets"))]
Via = Annotated[Transport, Depends(transport)]
Listings = Annotated[ResponseCache, Depends(listings)]
