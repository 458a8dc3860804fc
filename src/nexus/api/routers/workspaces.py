"""/v1/drives and /v1/vms/{ref}/snapshots, /v1/vms/{ref}/clone: drives, snapshots and clones. Each handler
parses, makes one service call, serialises."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from nexus.api.deps import Checkpoints, Drives, Network, Snapshots
from nexus.schemas import (
    DriveAttach,
    DriveCreate,
    DriveOut,
    DriveResize,
    SnapshotCreate,
    SnapshotOut,
    VmClone,
    VmFork,
    VmOut,
)

router = APIRouter(tags=["workspaces"])


@router.get("/v1/drives")
async def list_drives(drives: Drives) -> list[DriveOut]:
    return [DriveOut.of(d) for d in drives.find()]


@router.post("/v1/drives", status_code=status.HTTP_201_CREATED)
async def create_drive(body: DriveCreate, drives: Drives) -> DriveOut:
    return DriveOut.of(await drives.create(body.name, image=body.image, size_mib=body.size_mib))


@router.get("/v1/drives/{ref}")
async def get_drive(ref: str, drives: Drives) -> DriveOut:
    return DriveOut.of(drives.get(ref))


@router.delete("/v1/drives/{ref}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_drive(ref: str, drives: Drives) -> Response:
    """Refused (409) while the drive is attached or a snapshot holds it; nothing is touched then."""
    await drives.remove(ref)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/drives/{ref}/attach")
async def attach_drive(ref: str, body: DriveAttach, drives: Drives) -> DriveOut:
    return DriveOut.of(drives.attach(ref, body.vm, body.mount))


@router.post("/v1/drives/{ref}/detach")
async def detach_drive(ref: str, drives: Drives) -> DriveOut:
    return DriveOut.of(drives.detach(ref))


@router.post("/v1/drives/{ref}/resize")
async def resize_drive(ref: str, body: DriveResize, drives: Drives) -> DriveOut:
    return DriveOut.of(await drives.resize(ref, body.size_mib))


@router.get("/v1/vms/{ref}/snapshots")
async def list_snapshots(ref: str, snapshots: Snapshots) -> list[SnapshotOut]:
    return [SnapshotOut.of(s) for s in snapshots.find(ref)]


@router.post("/v1/vms/{ref}/snapshots", status_code=status.HTTP_201_CREATED)
async def create_snapshot(ref: str, body: SnapshotCreate, snapshots: Snapshots) -> SnapshotOut:
    """Snapshot every drive of the VM together; a running VM's filesystems are frozen around it."""
    return SnapshotOut.of(await snapshots.create(ref, body.name))


@router.get("/v1/vms/{ref}/snapshots/{name}")
async def get_snapshot(ref: str, name: str, snapshots: Snapshots) -> SnapshotOut:
    return SnapshotOut.of(snapshots.get(ref, name))


@router.delete("/v1/vms/{ref}/snapshots/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_snapshot(ref: str, name: str, snapshots: Snapshots) -> Response:
    await snapshots.remove(ref, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/v1/vms/{ref}/snapshots/{name}/rollback")
async def rollback_snapshot(ref: str, name: str, snapshots: Snapshots, net: Network, restart: bool = False) -> VmOut:
    """Needs the VM stopped (409 otherwise), or ``restart=true``: stop, roll back, start."""
    vm = await snapshots.rollback(ref, name, restart=restart)
    return VmOut.of(vm, net.info(vm.id))


@router.post("/v1/vms/{ref}/checkpoints", status_code=status.HTTP_201_CREATED)
async def create_checkpoint(ref: str, body: SnapshotCreate, checkpoints: Checkpoints) -> SnapshotOut:
    """The running VM's memory and device state with its drives, taken while the guest is paused; listed with its
    snapshots. 409 unless it is ready or paused."""
    return SnapshotOut.of(await checkpoints.create(ref, body.name))


@router.post("/v1/vms/{ref}/snapshots/{name}/restore")
async def restore_checkpoint(ref: str, name: str, checkpoints: Checkpoints, net: Network) -> VmOut:
    """Bring the VM back running from a checkpoint (whatever runs now is thrown away). 409 when the snapshot has
    no saved memory, the VM's shape differs from the checkpoint's, or the saved state is damaged; nothing changes
    then."""
    vm = await checkpoints.restore(ref, name)
    return VmOut.of(vm, net.info(vm.id))


@router.post("/v1/vms/{ref}/fork", status_code=status.HTTP_201_CREATED)
async def fork_vm(ref: str, body: VmFork, checkpoint_service: Checkpoints, net: Network) -> VmOut:
    """A new VM running on from a checkpoint of this one (taken now unless named), with copies of its drives and
    an identity of its own (name, machine id, address); both run on."""
    vm = await checkpoint_service.fork(ref, body.name, body.checkpoint)
    return VmOut.of(vm, net.info(vm.id))


@router.post("/v1/vms/{ref}/clone", status_code=status.HTTP_201_CREATED)
async def clone_vm(ref: str, body: VmClone, snapshots: Snapshots, net: Network) -> VmOut:
    vm = await snapshots.clone(ref, body.name, body.snapshot)
    return VmOut.of(vm, net.info(vm.id))
