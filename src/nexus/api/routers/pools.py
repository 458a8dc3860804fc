"""/v1/pools: warm pools (templates of VMs nexusd keeps booted, ready to be claimed by ``POST /v1/vms``)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from nexus.api.deps import Pools
from nexus.schemas import PoolIn, PoolOut

router = APIRouter(prefix="/v1/pools", tags=["pools"])


@router.get("")
async def list_pools(pools: Pools) -> list[PoolOut]:
    return [PoolOut.of(p) for p in pools.all()]


@router.get("/{name}")
async def get_pool(name: str, pools: Pools) -> PoolOut:
    return PoolOut.of(pools.get(name))


@router.put("/{name}")
async def set_pool(name: str, body: PoolIn, pools: Pools) -> PoolOut:
    return PoolOut.of(
        pools.set(
            name,
            body.size,
            image=body.image,
            vcpus=body.vcpus,
            mem_mib=body.mem_mib,
            network=body.network,
            egress=body.egress,
        )
    )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_pool(name: str, pools: Pools) -> Response:
    await pools.remove(name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
