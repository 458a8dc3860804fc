"""Workspaces with real VMs under QEMU, through a real nexusd whose state dir is on a btrfs filesystem this module
makes on a loop device (and removes), and again on a plain directory (ext4 here: the copy backend).

Per backend: a data drive attached and mounted, a file written, a live snapshot, the file changed, a refused and a
restarting rollback, the original read back; a clone from the snapshot booted and read; the VM's own MCP endpoint
checkpointing itself; refused deletes of a referenced image and drives leaving everything in place. Three boots per
backend. The kernel and image come from the e2e session daemon's state (built once per machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from nexus.domain import Image
from nexus.store import ImageRepo, open_database
from nexus.workspaces import btrfs
from tests.api_client import NexusClient
from tests.e2e.conftest import AGENT_IMAGE, STATE, nexusctl, nexusctl_json
from tests.helpers import Daemon, btrfs_mount, start_daemon

pytestmark = pytest.mark.vm


def _seed_state(state: Path, image: dict[str, Any]) -> None:
    """Give a new state dir the e2e session's kernel cache and default image (as a copy and a database row)."""
    (state / "cache").mkdir(parents=True)
    shutil.copytree(STATE / "cache" / "kernels", state / "cache" / "kernels", symlinks=True)
    accel = STATE / "cache" / "accel.json"
    if accel.exists():
        shutil.copy2(accel, state / "cache" / "accel.json")
    images = state / "images"
    images.mkdir()
    target = images / "debian-bookworm.ext4"
    subprocess.run(["cp", "--sparse=always", image["path"], str(target)], check=True)
    conn = open_database(state / "nexus.db")
    try:
        ImageRepo(conn).insert(
            Image(
                id=image["id"],
                name=image["name"],
                base=image["base"],
                path=target,
                size_mib=image["size_mib"],
                sha256=image["sha256"],
                init_system=image["init_system"],
                agent_version=image["agent_version"],
                built_at=datetime.fromisoformat(image["built_at"]),
            )
        )
    finally:
        conn.close()


@pytest.fixture(scope="module")
def ws_image(e2e_daemon: Daemon) -> dict[str, Any]:
    """The session's image: this checkout's agent (mounting drives, freezing)."""
    with NexusClient(e2e_daemon.socket, timeout_s=60) as client:
        image: dict[str, Any] = client.get_image(AGENT_IMAGE)
        return image


@pytest.fixture(scope="module", params=["btrfs", "copy"])
def ws_daemon(request: pytest.FixtureRequest, ws_image: dict[str, Any]) -> Iterator[Daemon]:
    image = {**ws_image, "name": "debian-bookworm"}  # the default image of the new daemon
    base = Path(tempfile.mkdtemp(prefix="nxws-", dir="/var/tmp"))
    try:
        with btrfs_mount(base, "2G") if request.param == "btrfs" else contextlib.nullcontext(base) as root:
            state = root / "state"
            _seed_state(state, image)
            config = base / "nexusd.toml"
            config.write_text("boot_timeout_s = 90\nheartbeat_timeout_s = 6\nstop_timeout_s = 10\n")
            daemon = start_daemon(base, "--config", str(config), state_dir=state)
            try:
                yield daemon
            finally:
                code = daemon.stop()
                if code != 0:
                    print(daemon.log_text()[-5000:])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _sh(daemon: Daemon, vm: str, script: str) -> str:
    return nexusctl(daemon, "vm", "exec", "-s", vm, "--", script).stdout.decode()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_snapshot_rollback_clone_and_refusals(ws_daemon: Daemon, request: pytest.FixtureRequest) -> None:
    backend = request.node.callspec.params["ws_daemon"]
    d = ws_daemon
    status = nexusctl_json(d, "status")
    assert status["storage"]["name"] == backend, status["storage"]
    state = d.state_dir

    from_image = nexusctl_json(d, "drive", "create", "ws-img", "--image", "debian-bookworm")
    assert (from_image["size_mib"], from_image["image"]) == (1024, "debian-bookworm")
    nexusctl(d, "drive", "rm", "ws-img")
    drive = nexusctl_json(d, "drive", "create", "ws-data", "--size", "64")
    assert (drive["kind"], drive["size_mib"], drive["vm_id"]) == ("data", 64, None)
    nexusctl(d, "vm", "create", "e2e-ws", "--mem", "384")
    nexusctl(d, "drive", "attach", "ws-data", "--vm", "e2e-ws", "--mount", "/data")
    try:
        assert nexusctl_json(d, "vm", "start", "e2e-ws")["state"] == "ready"
        mounts = _sh(d, "e2e-ws", "grep ' /data ' /proc/mounts")
        assert mounts.split()[2] == "ext4", mounts
        _sh(d, "e2e-ws", "echo one > /data/f && echo one > /root/r")

        snap = nexusctl_json(d, "snapshot", "create", "e2e-ws", "--name", "s1")  # live: frozen around it
        assert sorted(x["kind"] for x in snap["drives"]) == ["data", "root"]
        if backend == "btrfs":
            for item in snap["drives"]:
                volume = state / "snapshots" / snap["id"] / item["drive_id"]
                assert btrfs.is_subvolume(volume) and btrfs.is_readonly(volume)
        _sh(d, "e2e-ws", "echo two > /data/f && echo two > /root/r && sync")

        refused = nexusctl(d, "snapshot", "rollback", "e2e-ws", "s1", check=False)
        assert refused.returncode == 5, refused.stderr
        assert _sh(d, "e2e-ws", "cat /data/f /root/r") == "two\ntwo\n"

        back = nexusctl_json(d, "snapshot", "rollback", "e2e-ws", "s1", "--restart")
        assert back["state"] == "ready"
        assert _sh(d, "e2e-ws", "cat /data/f /root/r") == "one\none\n"

        # The VM checkpoints itself through its own MCP endpoint (the tool nexusd serves beside the agent's).
        _mcp_snapshot(d, "e2e-ws", "agent-cp")
        assert {s["name"] for s in nexusctl_json(d, "snapshot", "ls", "e2e-ws")} == {"s1", "agent-cp"}

        clone = nexusctl_json(d, "vm", "clone", "e2e-ws", "e2e-ws-clone", "--snapshot", "s1")
        assert clone["state"] == "created"
        try:
            nexusctl(d, "vm", "start", "e2e-ws-clone")
            assert _sh(d, "e2e-ws-clone", "cat /data/f /root/r") == "one\none\n"
            _sh(d, "e2e-ws-clone", "echo clone > /data/f")
            assert _sh(d, "e2e-ws", "cat /data/f") == "one\n"  # the clone's drives are its own
        finally:
            nexusctl(d, "vm", "rm", "--force", "e2e-ws-clone", check=False)
        names = {x["name"] for x in nexusctl_json(d, "drive", "ls")}
        assert "e2e-ws-clone.root" not in names and "e2e-ws-clone-ws-data" in names  # data drives outlive VMs

        # Refused deletes change nothing: the image a VM uses, an attached drive, a drive a snapshot holds.
        image_file = state / "images" / "debian-bookworm.ext4"
        before = _digest(image_file)
        refused = nexusctl(d, "image", "rm", "debian-bookworm", check=False)
        assert refused.returncode == 5 and b"e2e-ws" in refused.stderr
        assert _digest(image_file) == before
        data_file = state / "drives" / drive["id"] / "disk.img"
        refused = nexusctl(d, "drive", "rm", "ws-data", check=False)
        assert refused.returncode == 5 and b"attached" in refused.stderr
        nexusctl(d, "vm", "stop", "e2e-ws")
        nexusctl(d, "drive", "detach", "ws-data")
        held = _digest(data_file)
        refused = nexusctl(d, "drive", "rm", "ws-data", check=False)
        assert refused.returncode == 5 and b"e2e-ws/s1" in refused.stderr
        assert _digest(data_file) == held
        assert "ws-data" in {x["name"] for x in nexusctl_json(d, "drive", "ls")}
        nexusctl(d, "snapshot", "rm", "e2e-ws", "s1")
        nexusctl(d, "snapshot", "rm", "e2e-ws", "agent-cp")
        nexusctl(d, "drive", "rm", "ws-data")
        assert not data_file.parent.exists()
        assert os.listdir(state / "snapshots") == []
    finally:
        nexusctl(d, "vm", "rm", "--force", "e2e-ws", check=False)
        for name in ("ws-data", "e2e-ws-clone-ws-data"):
            nexusctl(d, "drive", "rm", name, check=False)
    assert [x["name"] for x in nexusctl_json(d, "drive", "ls")] == []


def _mcp_snapshot(daemon: Daemon, vm: str, name: str) -> None:
    """Call workspace_snapshot on the VM's MCP endpoint with the official SDK client."""

    async def call() -> None:
        http = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(uds=str(daemon.socket)), timeout=httpx2.Timeout(30, read=120)
        )
        url = f"http://nexusd/v1/vms/{vm}/mcp"
        async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert {"workspace_snapshot", "workspace_rollback", "file_read"} <= set(tools)
            assert "RESTARTS THE VM" in (tools["workspace_rollback"].description or "")
            result = await client.call_tool("workspace_snapshot", {"name": name})
            assert result.is_error is False, result.content
            assert result.structured_content is not None and result.structured_content["name"] == name
            refused = await client.call_tool("workspace_snapshot", {"name": name})
            assert refused.is_error is True
            assert isinstance(refused.content[0], TextContent)
            assert json.loads(refused.content[0].text)["error"]["code"] == "conflict"

    anyio.run(call)
