"""Workspace tools over MCP: drives, snapshots, checkpoints, clones and forks on the management endpoint (``/mcp``),
and ``workspace_*`` tools on a VM's own endpoint (``/v1/vms/{ref}/mcp``), served by nexusd beside the tools the
VM's agent serves, so an agent can snapshot or checkpoint its own computer, go back, and branch it.

Each tool is one call to ``DriveService``, ``SnapshotService`` or ``CheckpointService``; a refusal (bad arguments,
wrong state, a referenced drive) is an ``isError`` result carrying the domain code, as on the management endpoint.
This module only builds tools; ``nexus.mcp.manage`` and ``nexus.mcp.guest`` serve them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types

from nexus.domain import Drive, NetInfo, NexusError, Snapshot
from nexus.mcp.manage import ADDS, DESTROYS, READS, REMOVES, SETS, Ctx, Tools, _Tool, vm_dict
from nexus.schemas import (
    DriveArgs,
    DriveAttachArgs,
    DriveCreate,
    DriveOut,
    DriveResizeArgs,
    NoArgs,
    SnapshotArgs,
    SnapshotCreate,
    SnapshotCreateArgs,
    SnapshotOut,
    SnapshotRollbackArgs,
    VmArgs,
    VmCloneArgs,
    VmFork,
    VmForkArgs,
    WorkspaceRollbackArgs,
    parse,
)
from nexus.services import DriveService, SnapshotService
from nexus.services.checkpoints import CheckpointService


@dataclass(frozen=True, slots=True)
class Workspaces:
    snapshots: SnapshotService
    checkpoints: CheckpointService


def drive_dict(drive: Drive) -> dict[str, Any]:
    return DriveOut.of(drive).model_dump(mode="json")


def snapshot_dict(snapshot: Snapshot) -> dict[str, Any]:
    return SnapshotOut.of(snapshot).model_dump(mode="json")


def manage_tools(drives: DriveService, workspaces: Workspaces, net_info: Callable[[str], NetInfo | None]) -> Tools:
    """The management endpoint's drive, snapshot, checkpoint, clone and fork tools; ``net_info`` completes the VMs
    they return."""
    snapshots, checkpoints = workspaces.snapshots, workspaces.checkpoints

    async def drive_list(ctx: Ctx, args: NoArgs) -> dict[str, Any]:
        return {"drives": [drive_dict(d) for d in drives.find()]}

    async def drive_create(ctx: Ctx, args: DriveCreate) -> dict[str, Any]:
        return drive_dict(await drives.create(args.name, image=args.image, size_mib=args.size_mib))

    async def drive_attach(ctx: Ctx, args: DriveAttachArgs) -> dict[str, Any]:
        return drive_dict(drives.attach(args.drive, args.vm, args.mount))

    async def drive_detach(ctx: Ctx, args: DriveArgs) -> dict[str, Any]:
        return drive_dict(drives.detach(args.drive))

    async def drive_resize(ctx: Ctx, args: DriveResizeArgs) -> dict[str, Any]:
        return drive_dict(await drives.resize(args.drive, args.size_mib))

    async def drive_rm(ctx: Ctx, args: DriveArgs) -> dict[str, Any]:
        drive = drives.get(args.drive)
        await drives.remove(drive.id)
        return {"removed": drive.name, "id": drive.id}

    async def snapshot_create(ctx: Ctx, args: SnapshotCreateArgs) -> dict[str, Any]:
        return snapshot_dict(await snapshots.create(args.vm, args.name))

    async def snapshot_list(ctx: Ctx, args: VmArgs) -> dict[str, Any]:
        return {"snapshots": [snapshot_dict(s) for s in snapshots.find(args.vm)]}

    async def snapshot_rollback(ctx: Ctx, args: SnapshotRollbackArgs) -> dict[str, Any]:
        vm = await snapshots.rollback(args.vm, args.snapshot, restart=args.restart)
        return vm_dict(vm, net_info(vm.id))

    async def snapshot_rm(ctx: Ctx, args: SnapshotArgs) -> dict[str, Any]:
        await snapshots.remove(args.vm, args.snapshot)
        return {"removed": args.snapshot}

    async def vm_clone(ctx: Ctx, args: VmCloneArgs) -> dict[str, Any]:
        vm = await snapshots.clone(args.vm, args.name, args.snapshot)
        return vm_dict(vm, net_info(vm.id))

    async def vm_checkpoint(ctx: Ctx, args: SnapshotCreateArgs) -> dict[str, Any]:
        return snapshot_dict(await checkpoints.create(args.vm, args.name))

    async def vm_restore(ctx: Ctx, args: SnapshotArgs) -> dict[str, Any]:
        vm = await checkpoints.restore(args.vm, args.snapshot)
        return vm_dict(vm, net_info(vm.id))

    async def vm_fork(ctx: Ctx, args: VmForkArgs) -> dict[str, Any]:
        vm = await checkpoints.fork(args.vm, args.name, args.checkpoint)
        return vm_dict(vm, net_info(vm.id))

    return {
        "drive_list": _Tool("List drives", "List drives (root drives are named <vm>.root).", NoArgs, drive_list, READS),
        "drive_create": _Tool(
            "Create drive",
            "Create a data drive: a copy of an image, or an empty ext4 drive of size_mib MiB (give one of them).",
            DriveCreate,
            drive_create,
            SETS,
        ),
        "drive_attach": _Tool(
            "Attach drive",
            "Attach a data drive to a stopped VM; at its next boot the agent mounts it at mount (if given).",
            DriveAttachArgs,
            drive_attach,
            SETS,
        ),
        "drive_detach": _Tool(
            "Detach drive", "Detach a data drive from its stopped VM (the drive stays).", DriveArgs, drive_detach, SETS
        ),
        "drive_resize": _Tool(
            "Resize drive", "Grow a drive and its filesystem (its VM stopped).", DriveResizeArgs, drive_resize, SETS
        ),
        "drive_rm": _Tool(
            "Remove drive",
            "Remove a drive; refused while it is attached or a snapshot holds it.",
            DriveArgs,
            drive_rm,
            REMOVES,
        ),
        "snapshot_create": _Tool(
            "Snapshot VM",
            "Snapshot all of a VM's drives together (a running VM's filesystems are frozen for the moment).",
            SnapshotCreateArgs,
            snapshot_create,
            ADDS,
        ),
        "snapshot_list": _Tool("List snapshots", "A VM's snapshots.", VmArgs, snapshot_list, READS),
        "snapshot_rollback": _Tool(
            "Roll back VM",
            "Put a VM's drives back as a snapshot holds them; needs the VM stopped, or restart=true (stop, roll "
            "back, start). Everything written since the snapshot is lost.",
            SnapshotRollbackArgs,
            snapshot_rollback,
            DESTROYS,
        ),
        "snapshot_rm": _Tool("Remove snapshot", "Remove a snapshot.", SnapshotArgs, snapshot_rm, REMOVES),
        "vm_clone": _Tool(
            "Clone VM",
            "Create a new VM (not started) from a VM's current drives, or from one of its snapshots.",
            VmCloneArgs,
            vm_clone,
            SETS,
        ),
        "vm_checkpoint": _Tool(
            "Checkpoint VM",
            "Save a running VM's memory with its drives (the guest pauses meanwhile); vm_restore brings it back "
            "running from that moment. Listed with its snapshots.",
            SnapshotCreateArgs,
            vm_checkpoint,
            ADDS,
        ),
        "vm_restore": _Tool(
            "Restore VM",
            "Bring a VM back running from a checkpoint: processes, files and connections as they were then. "
            "Whatever runs in it now is lost.",
            SnapshotArgs,
            vm_restore,
            DESTROYS,
        ),
        "vm_fork": _Tool(
            "Fork VM",
            "Start a new VM running on from a checkpoint of a running VM (one taken now unless checkpoint is "
            "given): same processes and files, its own name, machine id, address and drives. Both run on.",
            VmForkArgs,
            vm_fork,
            SETS,
        ),
    }


VM_TOOLS = (
    types.Tool(
        name="workspace_snapshot",
        title="Snapshot this computer",
        annotations=ADDS.annotations("Snapshot this computer"),
        description=(
            "Checkpoint this computer: snapshot all of its drives at once (its filesystems are frozen for a "
            "moment, so the snapshot is consistent). Returns the snapshot's name; roll back to it with "
            "workspace_rollback."
        ),
        input_schema=SnapshotCreate.model_json_schema(),
    ),
    types.Tool(
        name="workspace_rollback",
        title="Roll this computer back",
        annotations=DESTROYS.annotations("Roll this computer back"),
        description=(
            "Roll this computer back to a snapshot made by workspace_snapshot. THIS RESTARTS THE VM: every "
            "running process ends, the VM reboots with its drives as the snapshot holds them, and everything "
            "written since the snapshot is lost. Tools work again once the call returns."
        ),
        input_schema=WorkspaceRollbackArgs.model_json_schema(),
    ),
    types.Tool(
        name="workspace_checkpoint",
        title="Checkpoint this computer",
        annotations=ADDS.annotations("Checkpoint this computer"),
        description=(
            "Save this computer's memory with its drives: every running process, open file and connection. The "
            "computer pauses while it is taken (about a second). Go back to it with workspace_restore, or branch "
            "it with workspace_fork."
        ),
        input_schema=SnapshotCreate.model_json_schema(),
    ),
    types.Tool(
        name="workspace_restore",
        title="Restore this computer",
        annotations=DESTROYS.annotations("Restore this computer"),
        description=(
            "Bring this computer back to a checkpoint made by workspace_checkpoint: processes, files and "
            "connections as they were then, running. Everything done since is lost. Tools work again once the "
            "call returns."
        ),
        input_schema=WorkspaceRollbackArgs.model_json_schema(),
    ),
    types.Tool(
        name="workspace_fork",
        title="Fork this computer",
        annotations=ADDS.annotations("Fork this computer"),
        description=(
            "Start a second computer running on from this one's current state (or from a checkpoint): same "
            "processes and files, its own name and drives. This computer runs on unchanged. Returns the new VM; "
            "reach it through its own MCP endpoint."
        ),
        input_schema=VmFork.model_json_schema(),
    ),
)


def is_vm_tool(name: str) -> bool:
    return any(tool.name == name for tool in VM_TOOLS)


async def call_vm_tool(workspaces: Workspaces, ref: str, name: str, args: dict[str, Any]) -> types.CallToolResult:
    """Run one of ``VM_TOOLS`` for VM ``ref``; refusals are ``isError`` results."""
    try:
        if name in ("workspace_snapshot", "workspace_checkpoint"):
            wanted = parse(SnapshotCreate, args)
            take = workspaces.snapshots.create if name == "workspace_snapshot" else workspaces.checkpoints.create
            return _result(snapshot_dict(await take(ref, wanted.name)), error=False)
        if name == "workspace_fork":
            fork = parse(VmFork, args)
            vm = await workspaces.checkpoints.fork(ref, fork.name, fork.checkpoint)
            return _result({"forked": {"id": vm.id, "name": vm.name, "state": str(vm.state)}}, error=False)
        back = parse(WorkspaceRollbackArgs, args)
        if name == "workspace_restore":
            vm = await workspaces.checkpoints.restore(ref, back.name)
            summary = {"id": vm.id, "name": vm.name, "state": str(vm.state)}
            return _result({"restored": back.name, "vm": summary}, error=False)
        vm = await workspaces.snapshots.rollback(ref, back.name, restart=True)
        summary = {"id": vm.id, "name": vm.name, "state": str(vm.state)}
        return _result({"rolled_back_to": back.name, "vm": summary, "restarted": True}, error=False)
    except NexusError as exc:
        return _result({"error": {"code": exc.code, "message": exc.message}})


def _result(structured: dict[str, Any], error: bool = True) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(structured, indent=2))],
        structured_content=structured,
        is_error=error,
    )
