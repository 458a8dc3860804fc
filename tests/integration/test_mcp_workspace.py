"""The workspace tools on nexusd's management MCP endpoint (official SDK client, real nexusd, copy backend):
drives, snapshots, rollback and clone of a VM that is not running, and the refusals as isError results."""

from __future__ import annotations

import anyio

from tests.helpers import Daemon
from tests.integration.test_mcp_manage import _ok, _refused, daemon, manage_client  # noqa: F401  (fixture)
from tests.integration.test_mcp_vm import pytestmark  # noqa: F401  (the same skips)


def test_workspace_tools(daemon: Daemon) -> None:  # noqa: F811
    async def scenario() -> None:
        async with manage_client(daemon) as client:
            drive = await _ok(client, "drive_create", {"name": "mw-data", "size_mib": 32})
            assert (drive["kind"], drive["size_mib"]) == ("data", 32)
            assert (await _refused(client, "drive_create", {"name": "mw-x"}))["code"] == "invalid"
            await _ok(client, "vm_create", {"name": "mw-vm", "mem_mib": 256})
            attached = await _ok(client, "drive_attach", {"drive": "mw-data", "vm": "mw-vm", "mount": "/data"})
            assert attached["mount_path"] == "/data"
            assert (await _refused(client, "drive_rm", {"drive": "mw-data"}))["code"] == "conflict"

            snap = await _ok(client, "snapshot_create", {"vm": "mw-vm", "name": "s1"})
            assert [d["drive_name"] for d in snap["drives"]] == ["mw-data"]  # as REST shows a snapshot
            listed = await _ok(client, "snapshot_list", {"vm": "mw-vm"})
            assert [s["name"] for s in listed["snapshots"]] == ["s1"]
            clone = await _ok(client, "vm_clone", {"vm": "mw-vm", "name": "mw-clone", "snapshot": "s1"})
            assert clone["state"] == "created"
            rolled = await _ok(client, "snapshot_rollback", {"vm": "mw-vm", "snapshot": "s1"})
            assert rolled["name"] == "mw-vm"
            bad = await _refused(client, "snapshot_rollback", {"vm": "mw-vm", "snapshot": "s1", "oops": 1})
            assert bad["code"] == "invalid"

            await _ok(client, "drive_detach", {"drive": "mw-data"})
            held = await _refused(client, "drive_rm", {"drive": "mw-data"})
            assert held["code"] == "conflict" and "mw-vm/s1" in held["message"]
            grown = await _ok(client, "drive_resize", {"drive": "mw-data", "size_mib": 40})
            assert grown["size_mib"] == 40
            await _ok(client, "snapshot_rm", {"vm": "mw-vm", "snapshot": "s1"})
            await _ok(client, "drive_rm", {"drive": "mw-data"})
            await _ok(client, "vm_rm", {"vm": "mw-clone"})
            await _ok(client, "drive_rm", {"drive": "mw-clone-mw-data"})
            await _ok(client, "vm_rm", {"vm": "mw-vm"})
            assert (await _ok(client, "drive_list", {}))["drives"] == []

    anyio.run(scenario)


def test_checkpoint_restore_and_fork_tools(daemon: Daemon) -> None:  # noqa: F811
    """On the fake Firecracker, whose stand-in takes and loads snapshots as the real one's API does."""

    async def scenario() -> None:
        async with manage_client(daemon) as client:
            await _ok(client, "vm_create", {"name": "mw-ck", "mem_mib": 256})
            await _ok(client, "vm_start", {"vm": "mw-ck"})
            ckpt = await _ok(client, "vm_checkpoint", {"vm": "mw-ck", "name": "c1"})
            assert ckpt["state"]["vmm"] == "firecracker" and ckpt["state"]["size_bytes"] > 0
            await _ok(client, "snapshot_create", {"vm": "mw-ck", "name": "s1"})
            listed = await _ok(client, "snapshot_list", {"vm": "mw-ck"})
            assert [(s["name"], s["state"] is not None) for s in listed["snapshots"]] == [("c1", True), ("s1", False)]

            restored = await _ok(client, "vm_restore", {"vm": "mw-ck", "snapshot": "c1"})
            assert restored["state"] == "ready"
            drives_only = await _refused(client, "vm_restore", {"vm": "mw-ck", "snapshot": "s1"})
            assert "holds drives only" in drives_only["message"]
            assert (await _refused(client, "vm_restore", {"vm": "mw-ck", "snapshot": "nope"}))["code"] == "not_found"

            fork = await _ok(client, "vm_fork", {"vm": "mw-ck", "name": "mw-ck2", "checkpoint": "c1"})
            assert (fork["name"], fork["state"]) == ("mw-ck2", "ready")
            taken = await _refused(client, "vm_fork", {"vm": "mw-ck", "name": "mw-ck2"})
            assert "already exists" in taken["message"]
            await _ok(client, "vm_rm", {"vm": "mw-ck2", "force": True})
            await _ok(client, "vm_rm", {"vm": "mw-ck", "force": True})

    anyio.run(scenario)
