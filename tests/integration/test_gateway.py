"""A portal's gateway through a real nexusd and real agents (the fake Firecracker runs each "guest" agent as a
host process): the official MCP SDK's stdio client runs ``nexus-mcp`` against the portal agent's gateway socket,
as an agent inside the portal would, and reaches work VMs only as the policy allows."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from tests.api_client import NexusClient
from tests.fakes.firecracker import gateway_socket
from tests.fakes.firecracker_host import firecracker_daemon, processes_mentioning
from tests.helpers import REPO, Daemon
from tests.integration.test_mcp_vm import pytestmark  # noqa: F401  (the same skips)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="nxgw-"))  # short: Unix socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(base: Path) -> Iterator[Daemon]:
    d = firecracker_daemon(base)
    try:
        with NexusClient(d.socket, timeout_s=60) as api:
            api.create_vm(name="p", role="portal", mem_mib=256)
            api.create_vm(name="w1", mem_mib=256, tags=["team=a"])
            api.create_vm(name="w2", mem_mib=256)
            for name in ("p", "w1", "w2"):
                api.start_vm(name)
        yield d
    finally:
        code = d.stop()
        log = d.log_text()
        assert code == 0, log[-3000:]


@pytest.fixture
def rule(daemon: Daemon) -> Iterator[int]:
    with NexusClient(daemon.socket) as api:
        made = api.request(
            "POST", "/v1/policies", json={"portal": "p", "work": "tag:team=a", "tools": ["run_command", "file_read"]}
        )
        yield int(made["id"])
        for r in api.request("GET", "/v1/policies"):
            api.send("DELETE", f"/v1/policies/{r['id']}")


def _socket(daemon: Daemon, base: Path, vm: str) -> str:
    with NexusClient(daemon.socket) as api:
        vm_id = api.get_vm(vm)["id"]
    return gateway_socket(str(base / "run" / "vms" / vm_id / "vsock.sock"))


@asynccontextmanager
async def inside(daemon: Daemon, base: Path, vm: str = "p") -> AsyncIterator[Client]:
    """An MCP session from inside ``vm``: the SDK's stdio client running nexus-mcp there."""
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "nexus.agent.gateway_client", "--socket", _socket(daemon, base, vm)],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    async with Client(stdio_client(server), mode="legacy", read_timeout_seconds=60) as client:
        yield client


def _text(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def test_routed_calls_follow_the_rule(daemon: Daemon, base: Path, rule: int) -> None:
    async def scenario() -> None:
        async with inside(daemon, base) as client:
            assert client.server_info is not None and client.server_info.name == "nexus-gateway"
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"vms_list", "run_command", "file_read"}
            assert tools["run_command"].input_schema["properties"]["vm"]["enum"] == ["w1"]

            messages: list[str | None] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # ProgressFnT
                messages.append(message)

            run = await client.call_tool(
                "run_command", {"vm": "w1", "command": "echo a; sleep 0.5; echo b"}, progress_callback=on_progress
            )
            assert not run.is_error and run.structured_content is not None
            assert run.structured_content["stdout"] == "a\nb\n"
            assert "a\n" in messages and "b\n" in messages  # streamed through the gateway as it ran

            w2 = await client.call_tool("run_command", {"vm": "w2", "command": "true"})
            assert w2.is_error and "no rule lets portal p use VM w2 (default deny)" in _text(w2)
            write = await client.call_tool("file_write", {"vm": "w1", "path": "/tmp/nx-gw-x", "content": "x"})
            assert write.is_error
            assert f"rule {rule} (p → tag:team=a) allows run_command, file_read on w1, not file_write" in _text(write)
            listed = await client.call_tool("vms_list", {})
            assert listed.structured_content == {
                "vms": [
                    {"name": "w1", "state": "ready", "tools": ["file_read", "run_command"], "created_by_me": False}
                ],
                "manage": False,
            }

            with NexusClient(daemon.socket) as api:
                api.send("DELETE", f"/v1/policies/{rule}")
            after = await client.call_tool("run_command", {"vm": "w1", "command": "true"})
            assert after.is_error and "default deny" in _text(after)  # the next call, same session

        with NexusClient(daemon.socket) as api:
            page = api.request("GET", "/v1/audit", params={"caller": "vm:p", "limit": 4})
        seen = [(e["action"], e["target"], e["decision"], e["rule"], e["via"]) for e in reversed(page["entries"])]
        assert seen == [
            ("run_command", "w1", "allow", rule, "gateway"),
            ("run_command", "w2", "deny", None, "gateway"),
            ("file_write", "w1", "deny", rule, "gateway"),
            ("run_command", "w1", "deny", None, "gateway"),
        ]
        assert page["entries"][-1]["result_bytes"] > 0 and page["entries"][-1]["duration_ms"] > 0

    anyio.run(scenario)


def test_a_work_vm_has_no_gateway(daemon: Daemon, base: Path, rule: int) -> None:
    """Only portals get a gateway link: a work VM's agent never opens its local endpoint."""
    assert not Path(_socket(daemon, base, "w1")).exists()
    assert Path(_socket(daemon, base, "p")).exists()


def test_cancelling_a_routed_call_stops_it_in_the_work_vm(daemon: Daemon, base: Path, rule: int) -> None:
    marker = f"sleep {31000 + os.getpid() % 1000}"

    async def scenario() -> None:
        async with inside(daemon, base) as client:
            with anyio.move_on_after(3):
                await client.call_tool("run_command", {"vm": "w1", "command": marker})
            assert processes_mentioning(marker)  # it did run
            deadline = time.monotonic() + 15
            while processes_mentioning(marker) and time.monotonic() < deadline:  # noqa: ASYNC110 (polling /proc)
                await anyio.sleep(0.2)
            assert not processes_mentioning(marker), "the cancelled command still runs in the work VM"
            ok = await client.call_tool("run_command", {"vm": "w1", "command": "echo still here"})
            assert ok.structured_content is not None and ok.structured_content["stdout"] == "still here\n"

    anyio.run(scenario)


def test_a_stopped_work_vm_is_a_tool_error(daemon: Daemon, base: Path, rule: int) -> None:
    async def scenario() -> None:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            api.stop_vm("w1")
            try:
                async with inside(daemon, base) as client:
                    result = await client.call_tool("run_command", {"vm": "w1", "command": "true"})
                    assert result.is_error and "VM w1 is stopped" in _text(result), _text(result)
            finally:
                api.start_vm("w1")

    anyio.run(scenario)


def test_a_session_outlives_a_nexusd_restart() -> None:
    """nexusd restarts, the VMs run on: the portal's agent redials, replays the session's handshake, and the same
    MCP session inside the portal goes on (calls while nexusd is down fail at once, they do not hang)."""
    base = Path(tempfile.mkdtemp(prefix="nxgwr-"))
    daemon = firecracker_daemon(base, stop_vms_on_exit=False)
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            api.create_vm(name="p", role="portal", mem_mib=256)
            api.create_vm(name="w1", mem_mib=256)
            api.start_vm("p")
            api.start_vm("w1")
            api.request("POST", "/v1/policies", json={"portal": "p", "work": "w1", "tools": ["run_command"]})

        async def scenario() -> None:
            nonlocal daemon
            async with inside(daemon, base) as client:
                before = await client.call_tool("run_command", {"vm": "w1", "command": "echo before"})
                assert before.structured_content is not None and before.structured_content["stdout"] == "before\n"
                assert daemon.stop() == 0
                with pytest.raises(MCPError, match="gateway link is down"):  # at once, while nexusd is down
                    await client.call_tool("run_command", {"vm": "w1", "command": "true"})
                daemon = firecracker_daemon(base, stop_vms_on_exit=False)
                deadline = time.monotonic() + 30
                while True:  # the agent redials once nexusd has adopted the VMs; w1 is ready once re-linked
                    with contextlib.suppress(MCPError):
                        after = await client.call_tool("run_command", {"vm": "w1", "command": "echo after"})
                        if not after.is_error:
                            break
                    assert time.monotonic() < deadline, "the session did not come back"
                    await anyio.sleep(0.5)
                assert after.structured_content is not None and after.structured_content["stdout"] == "after\n"

        anyio.run(scenario)
    finally:
        if daemon.proc.poll() is not None:  # the test failed while nexusd was down: one to clean up with
            daemon = firecracker_daemon(base)
        with NexusClient(daemon.socket, timeout_s=60) as api:
            for name in ("p", "w1"):
                api.remove_vm(name, force=True)
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_portal_manages_only_its_own_vms_within_bounds(daemon: Daemon, base: Path) -> None:
    async def scenario() -> None:
        async with inside(daemon, base) as client:
            refused = await client.call_tool("vm_create", {"name": "gw-x"})
            assert refused.is_error and "no rule lets portal p manage VMs (default deny)" in _text(refused)
            with NexusClient(daemon.socket) as api:
                api.request(
                    "POST",
                    "/v1/policies",
                    json={"portal": "p", "work": "@created", "tools": ["run_command"], "manage": True, "max_vms": 2,
                          "images": ["debian-bookworm"], "max_mem_mib": 512},
                )  # fmt: skip
            tools = {t.name for t in (await client.list_tools()).tools}
            assert {"vm_create", "vm_start", "vm_stop", "vm_snapshot", "vm_rollback", "vm_remove"} <= tools
            made = await client.call_tool("vm_create", {"name": "gw-a", "mem_mib": 256})
            assert not made.is_error and made.structured_content is not None, _text(made)
            assert made.structured_content["state"] == "ready"
            on_it = await client.call_tool("run_command", {"vm": "gw-a", "command": "echo mine"})
            assert on_it.structured_content is not None and on_it.structured_content["stdout"] == "mine\n"
            snap = await client.call_tool("vm_snapshot", {"vm": "gw-a", "name": "s1"})
            assert not snap.is_error and snap.structured_content is not None
            assert snap.structured_content["name"] == "s1"
            back = await client.call_tool("vm_rollback", {"vm": "gw-a", "snapshot": "s1", "restart": True})
            assert not back.is_error and back.structured_content is not None, _text(back)
            assert back.structured_content["state"] == "ready"
            big = await client.call_tool("vm_create", {"name": "gw-big", "mem_mib": 1024, "start": False})
            assert big.is_error and "at most 512 MiB of memory, asked for 1024" in _text(big)
            other = await client.call_tool("vm_create", {"name": "gw-b", "image": "alpine", "start": False})
            assert other.is_error and "image alpine is not one of debian-bookworm" in _text(other)
            second = await client.call_tool("vm_create", {"name": "gw-b", "mem_mib": 256, "start": False})
            assert not second.is_error, _text(second)
            third = await client.call_tool("vm_create", {"name": "gw-c", "mem_mib": 256, "start": False})
            assert third.is_error and "at most 2 VMs, and this portal has 2" in _text(third)
            foreign = await client.call_tool("vm_stop", {"vm": "w1"})
            assert foreign.is_error and "may stop only VMs it created; w1 is not one" in _text(foreign)
            for name in ("gw-a", "gw-b"):
                gone = await client.call_tool("vm_remove", {"vm": name})
                assert not gone.is_error, _text(gone)

    try:
        anyio.run(scenario)
    finally:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            names = {vm["name"] for vm in api.list_vms()}
            assert not names & {"gw-a", "gw-b", "gw-c", "gw-big"} and "w1" in names
            assert api.get_vm("w1")["state"] == "ready"
            for r in api.request("GET", "/v1/policies"):
                api.send("DELETE", f"/v1/policies/{r['id']}")


def test_max_result_bytes_bounds_streamed_output_too(daemon: Daemon, base: Path) -> None:
    async def scenario() -> None:
        with NexusClient(daemon.socket) as api:
            made = api.request(
                "POST",
                "/v1/policies",
                json={"portal": "p", "work": "w1", "tools": ["run_command"], "max_result_bytes": 200},
            )
        try:
            async with inside(daemon, base) as client:
                messages: list[str | None] = []

                async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # ProgressFnT
                    messages.append(message)

                command = "for i in $(seq 1 50); do echo line-$i-padding-padding; sleep 0.01; done"
                result = await client.call_tool(
                    "run_command", {"vm": "w1", "command": command}, progress_callback=on_progress
                )
                assert result.is_error and "more than the 200 bytes" in _text(result)
                streamed = "".join(m for m in messages if m and m.startswith("line-"))
                assert 0 < len(streamed.encode()) <= 200  # output streamed up to the limit, no further
        finally:
            with NexusClient(daemon.socket) as api:
                api.send("DELETE", f"/v1/policies/{made['id']}")

    anyio.run(scenario)
