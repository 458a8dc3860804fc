"""/v1/health: is the daemon up, which version, how many VMs, which VMM driver and storage backend and why, and
whether VMs have a way out of the host."""

from __future__ import annotations

from fastapi import APIRouter

from nexus import __version__
from nexus.api.deps import ServicesDep
from nexus.schemas import DriverOut, EgressOut, HealthOut, PoolOut, StorageOut

router = APIRouter(tags=["health"])


@router.get("/v1/health")
async def health(svc: ServicesDep) -> HealthOut:
    name, reason = svc.vms.driver_status()
    storage, storage_reason = svc.drives.storage_status()
    egress, egress_reason = svc.network.egress()
    return HealthOut(
        status="ok",
        version=__version__,
        vms=svc.vms.count(),
        driver=DriverOut(name=name, reason=reason),
        storage=StorageOut(name=storage, reason=storage_reason),
        network=EgressOut(enabled=svc.network.enabled, egress=egress, reason=egress_reason),
        pools=[PoolOut.of(p) for p in svc.pools.all()],
    )
