"""Workspace tools over MCP: drives, snapshots and clones on the management endpoint (``/mcp``), and
``workspace_snapshot`` / ``workspace_rollback`` on a VM's own endpoint (``/v1/vms/{ref}/mcp``), served by nexusd
beside the tools the VM's agent serves, so an agent can checkpoint its own computer and roll it back.

Each tool is one call to ``DriveService`` or ``SnapshotService``; a refusal (bad arguments, wrong state, a
referenced drive) is an ``isError`` result carrying the domain code, as on the management endpoint. This module
only builds tools; ``nexus.mcp.manage`` and ``nexus.mcp.guest`` serve them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import mcp_types as types

from nexus.domain import Drive, NetInfo, NexusError, Snapshot
from nexus.mcp.manage import ADDS, DESTROYS, READS, REMOVES, SETS, Args, Ctx, _get, _schema, _Tool, vm_dict
from nexus.schemas import DriveOut, SnapshotOut
from nexus.services import DriveService, SnapshotService

_VM = {"vm": {"type": "string", "description": "VM name or id"}}
_DRIVE = {"drive": {"type": "string", "description": "drive name or id"}}
_SNAP = {"snapshot": {"type": "string", "description": "snapshot name"}}


def drive_dict(drive: Drive) -> dict[str, Any]:
    return DriveOut.of(drive).model_dump(mode="json")


def snapshot_dict(snapshot: Snapshot) -> dict[str, Any]:
    return SnapshotOut.of(snapshot).model_dump(mode="json")


def manage_tools(
    drives: DriveService, snapshots: SnapshotService, net_info: Callable[[str], NetInfo | None]
) -> dict[str, _Tool]:
    """The management endpoint's drive, snapshot and clone tools; ``net_info`` completes the VMs they return."""

    async def drive_list(ctx: Ctx, args: Args) -> dict[str, Any]:
        return {"drives": [drive_dict(d) for d in drives.find()]}

    async def drive_create(ctx: Ctx, args: Args) -> dict[str, Any]:
        drive = await drives.create(
            _get(args, "name", str, required=True), image=_get(args, "image", str), size_mib=_get(args, "size_mib", int)
        )
        return drive_dict(drive)

    async def drive_attach(ctx: Ctx, args: Args) -> dict[str, Any]:
        drive = drives.attach(
            _get(args, "drive", str, required=True), _get(args, "vm", str, required=True), _get(args, "mount", str)
        )
        return drive_dict(drive)

    async def drive_detach(ctx: Ctx, args: Args) -> dict[str, Any]:
        return drive_dict(drives.detach(_get(args, "drive", str, required=True)))

    async def drive_resize(ctx: Ctx, args: Args) -> dict[str, Any]:
        ref = _get(args, "drive", str, required=True)
        return drive_dict(await drives.resize(ref, _get(args, "size_mib", int, required=True)))

    async def drive_rm(ctx: Ctx, args: Args) -> dict[str, Any]:
        drive = drives.get(_get(args, "drive", str, required=True))
        await drives.remove(drive.id)
        return {"removed": drive.name, "id": drive.id}

    async def snapshot_create(ctx: Ctx, args: Args) -> dict[str, Any]:
        snap = await snapshots.create(_get(args, "vm", str, required=True), _get(args, "name", str))
        return snapshot_dict(snap)

    async def snapshot_list(ctx: Ctx, args: Args) -> dict[str, Any]:
        return {"snapshots": [snapshot_dict(s) for s in snapshots.find(_get(args, "vm", str, required=True))]}

    async def snapshot_rollback(ctx: Ctx, args: Args) -> dict[str, Any]:
        vm = await snapshots.rollback(
            _get(args, "vm", str, required=True),
            _get(args, "snapshot", str, required=True),
            restart=_get(args, "restart", bool, False),
        )
        return vm_dict(vm, net_info(vm.id))

    async def snapshot_rm(ctx: Ctx, args: Args) -> dict[str, Any]:
        name = _get(args, "snapshot", str, required=True)
        await snapshots.remove(_get(args, "vm", str, required=True), name)
        return {"removed": name}

    async def vm_clone(ctx: Ctx, args: Args) -> dict[str, Any]:
        vm = await snapshots.clone(
            _get(args, "vm", str, required=True), _get(args, "name", str, required=True), _get(args, "snapshot", str)
        )
        return vm_dict(vm, net_info(vm.id))

    name_prop = {"name": {"type": "string"}}
    return {
        "drive_list": _Tool(
            "List drives", "List drives (root drives are named <vm>.root).", _schema({}), drive_list, READS
        ),
        "drive_create": _Tool(
            "Create drive",
            "Create a data drive: a copy of an image, or an empty ext4 drive of size_mib MiB (give one of them).",
            _schema({**name_prop, "image": {"type": "string"}, "size_mib": {"type": "integer"}}, ("name",)),
            drive_create,
            SETS,
        ),
        "drive_attach": _Tool(
            "Attach drive",
            "Attach a data drive to a stopped VM; at its next boot the agent mounts it at mount (if given).",
            _schema({**_DRIVE, **_VM, "mount": {"type": "string"}}, ("drive", "vm")),
            drive_attach,
            SETS,
        ),
        "drive_detach": _Tool(
            "Detach drive",
            "Detach a data drive from its stopped VM (the drive stays).",
            _schema(_DRIVE, ("drive",)),
            drive_detach,
            SETS,
        ),
        "drive_resize": _Tool(
            "Resize drive",
            "Grow a drive and its filesystem (its VM stopped).",
            _schema({**_DRIVE, "size_mib": {"type": "integer"}}, ("drive", "size_mib")),
            drive_resize,
            SETS,
        ),
        "drive_rm": _Tool(
            "Remove drive",
            "Remove a drive; refused while it is attached or a snapshot holds it.",
            _schema(_DRIVE, ("drive",)),
            drive_rm,
            REMOVES,
        ),
        "snapshot_create": _Tool(
            "Snapshot VM",
            "Snapshot all of a VM's drives together (a running VM's filesystems are frozen for the moment).",
            _schema({**_VM, **name_prop}, ("vm",)),
            snapshot_create,
            ADDS,
        ),
        "snapshot_list": _Tool("List snapshots", "A VM's snapshots.", _schema(_VM, ("vm",)), snapshot_list, READS),
        "snapshot_rollback": _Tool(
            "Roll back VM",
            "Put a VM's drives back as a snapshot holds them; needs the VM stopped, or restart=true (stop, roll "
            "back, start). Everything written since the snapshot is lost.",
            _schema({**_VM, **_SNAP, "restart": {"type": "boolean", "default": False}}, ("vm", "snapshot")),
            snapshot_rollback,
            DESTROYS,
        ),
        "snapshot_rm": _Tool(
            "Remove snapshot", "Remove a snapshot.", _schema({**_VM, **_SNAP}, ("vm", "snapshot")), snapshot_rm, REMOVES
        ),
        "vm_clone": _Tool(
            "Clone VM",
            "Create a new VM (not started) from a VM's current drives, or from one of its snapshots.",
            _schema({**_VM, "name": {"type": "string", "description": "the new VM's name"}, **_SNAP}, ("vm", "name")),
            vm_clone,
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
        input_schema=_schema({"name": {"type": "string", "description": "default: snap-<UTC time>"}}),
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
        input_schema=_schema({"name": {"type": "string", "description": "the snapshot's name"}}, ("name",)),
    ),
)


def is_vm_tool(name: str) -> bool:
    return any(tool.name == name for tool in VM_TOOLS)


async def call_vm_tool(snapshots: SnapshotService, ref: str, name: str, args: Args) -> types.CallToolResult:
    """Run ``workspace_snapshot`` or ``workspace_rollback`` for VM ``ref``; refusals are ``isError`` results."""
    try:
        unknown = sorted(set(args) - {"name"})
        if unknown:
            return _result({"error": {"code": "invalid", "message": f"unknown argument(s): {', '.join(unknown)}"}})
        if name == "workspace_snapshot":
            snap = await snapshots.create(ref, _get(args, "name", str))
            return _result(snapshot_dict(snap), error=False)
        vm = await snapshots.rollback(ref, _get(args, "name", str, required=True), restart=True)
        summary = {"id": vm.id, "name": vm.name, "state": str(vm.state)}
        return _result({"rolled_back_to": args["name"], "vm": summary, "restarted": True}, error=False)
    except NexusError as exc:
        return _result({"error": {"code": exc.code, "message": exc.message}})


def _result(structured: dict[str, Any], error: bool = True) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(structured, indent=2))],
        structured_content=structured,
        is_error=error,
    )
