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
