"""/v1/vms: VM resources. Each handler parses, makes one service call, serialises."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter

from nexus.api.deps import Listings, Network, Pools, Vms
from nexus.api.streaming import Emit, ndjson, progress_emitter
from nexus.domain import Role, Vm, VmFilter, VmState
from nexus.schemas import LogsOut, StateChangeOut, TagsIn, VmCreateOrClaim, VmOut
from nexus.services import NetworkService

router = APIRouter(prefix="/v1/vms", tags=["vms"])


def _out(vm: Vm, net: NetworkService) -> VmOut:
    return VmOut.of(vm, net.info(vm.id))


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_vm(body: VmCreateOrClaim, vms: Vms, pools: Pools, net: Network) -> VmOut:
    spec = body.spec()
    return _out(await pools.claim_or_create(spec) if body.claim else vms.create(spec), net)


_VM_LIST = TypeAdapter(list[VmOut])


@router.get("", response_model=list[VmOut])
async def list_vms(
    vms: Vms,
    net: Network,
    listings: Listings,
    role: Role | None = None,
    state: VmState | None = None,
    tag: Annotated[list[str] | None, Query(description="repeat to require several tags")] = None,
) -> Response:
    flt = VmFilter(role=role, state=state, tags=tuple(sorted(set(tag or ()))))

    def build() -> bytes:  # serialised here, once: FastAPI would validate every row again against the model
        infos = net.infos()
        return _VM_LIST.dump_json([VmOut.of(vm, infos.get(vm.id)) for vm in vms.find(flt)])

    return Response(listings.get(flt, vms.generation(), build), media_type="application/json")


@router.get("/{ref}")
async def get_vm(ref: str, vms: Vms, net: Network) -> VmOut:
    return _out(vms.get(ref), net)


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_vm(ref: str, vms: Vms, force: bool = False) -> Response:
    await vms.remove(ref, force=force)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{ref}/prepare", response_class=StreamingResponse, responses={200: {"content": {"application/x-ndjson": {}}}}
)
async def prepare_vm(request: Request, ref: str, vms: Vms) -> StreamingResponse:
    """Fetch the VM's kernel and build its image if missing: NDJSON progress, then what it boots with."""

    async def work(emit: Emit) -> dict[str, str]:
        files = await vms.prepare(ref, progress_emitter(emit))
        return {"kernel": files.kernel.version, "image": files.image.name}

    return await ndjson(request, work)


@router.post("/{ref}/start")
async def start_vm(ref: str, vms: Vms, net: Network, wait: bool = True) -> VmOut:
    return _out(await vms.start(ref, wait=wait), net)


@router.post("/{ref}/stop")
async def stop_vm(ref: str, vms: Vms, net: Network) -> VmOut:
    return _out(await vms.stop(ref), net)


@router.post("/{ref}/pause")
async def pause_vm(ref: str, vms: Vms, net: Network) -> VmOut:
    """Freeze a running VM's vCPUs (its memory stays); heartbeats are not expected while paused."""
    return _out(await vms.pause(ref), net)


@router.post("/{ref}/resume")
async def resume_vm(ref: str, vms: Vms, net: Network) -> VmOut:
    return _out(await vms.resume(ref), net)


@router.get("/{ref}/history")
async def vm_history(ref: str, vms: Vms) -> list[StateChangeOut]:
    return [StateChangeOut.of(change) for change in vms.history(ref)]


@router.get("/{ref}/logs")
async def vm_logs(ref: str, vms: Vms, tail: Annotated[int | None, Query(ge=1)] = None) -> LogsOut:
    return LogsOut(vm_id=vms.get(ref).id, lines=vms.logs(ref, tail))


@router.get("/{ref}/tags")
async def list_tags(ref: str, vms: Vms) -> list[str]:
    return list(vms.get(ref).tags)


@router.post("/{ref}/tags")
async def add_tags(ref: str, body: TagsIn, vms: Vms) -> list[str]:
    return list(vms.add_tags(ref, body.tags).tags)


@router.delete("/{ref}/tags/{tag}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_tag(ref: str, tag: str, vms: Vms) -> Response:
    vms.remove_tags(ref, [tag])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
