"""A real QEMU VM driven only over MCP, with the official SDK clients: created and started through ``/mcp``, every
guest tool called through ``/v1/vms/{ref}/mcp`` (and the errors: unknown tool, bad arguments), the same tools
through ``nexusctl mcp-bridge`` over stdio, then the VM killed in the middle of a call (an error, not a hang; the
daemon keeps serving) and its endpoint refusing calls once it is not ready. One boot for all of it."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from nexus.mcp.errors import INVALID_STATE
from nexus.protocol import INVALID_PARAMS
from tests.e2e.conftest import nexusctl
from tests.helpers import Daemon, call_killing_vmm

pytestmark = pytest.mark.vm

VM = "e2e-mcp"


@asynccontextmanager
async def http_client(daemon: Daemon, path: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(
        transport=httpx2.AsyncHTTPTransport(uds=str(daemon.socket)), timeout=httpx2.Timeout(60, read=300)
    )
    async with http, Client(streamable_http_client(f"http://nexusd{path}", http_client=http)) as client:
        yield client


async def ok(client: Client, name: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = await client.call_tool(name, args, **kw)
    assert result.is_error is False, result.content
    assert result.structured_content is not None
    content: dict[str, Any] = result.structured_content
    return content


async def every_guest_tool(client: Client, tag: str) -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert tools >= {"file_read", "file_write", "file_delete", "list_dir", "run_command", "system_info"}
    path = f"/root/{tag}.txt"
    assert (await ok(client, "file_write", {"path": path, "content": f"hello {tag}\n"}))["bytes_written"] == 7 + len(
        tag
    )
    assert (await ok(client, "file_read", {"path": path}))["content"] == f"hello {tag}\n"
    listing = await ok(client, "list_dir", {"path": "/root"})
    assert f"{tag}.txt" in {e["name"] for e in listing["entries"]}
    progress: list[str | None] = []

    async def on_progress(_value: float, _total: float | None, message: str | None) -> None:
        progress.append(message)

    ran = await ok(client, "run_command", {"command": f"cat {path}; echo err >&2"}, progress_callback=on_progress)
    assert (ran["exit_code"], ran["stdout"], ran["stderr"]) == (0, f"hello {tag}\n", "err\n")
    assert "".join(m or "" for m in progress) in (f"hello {tag}\nerr\n", f"err\nhello {tag}\n")
    assert (await ok(client, "system_info", {}))["kernel"].endswith("-cloud-amd64")
    await ok(client, "file_delete", {"path": path})
    gone = await client.call_tool("file_read", {"path": path})
    assert gone.is_error is True
    with pytest.raises(MCPError) as unknown:
        await client.call_tool("no_such_tool", {})
    assert unknown.value.code == INVALID_PARAMS
    bad = await client.call_tool("run_command", {"command": 42})
    assert bad.is_error is True


def test_a_vm_over_mcp_only(e2e_daemon: Daemon) -> None:
    async def scenario() -> None:
        async with http_client(e2e_daemon, "/mcp") as manage:
            await ok(manage, "vm_create", {"name": VM})
            started = await ok(manage, "vm_start", {"vm": VM})
            assert started["state"] == "ready"

        async with http_client(e2e_daemon, f"/v1/vms/{VM}/mcp") as guest:
            await every_guest_tool(guest, "http")

        bridge = [sys.executable, "-m", "nexus.cli.main", "--socket", str(e2e_daemon.socket), "mcp-bridge", VM]
        server = StdioServerParameters(command=bridge[0], args=bridge[1:], env=dict(os.environ))
        async with Client(server, read_timeout_seconds=120) as stdio:
            await every_guest_tool(stdio, "stdio")

        async with http_client(e2e_daemon, "/mcp") as manage:
            inspected = await ok(manage, "vm_inspect", {"vm": VM})
            assert (inspected["state"], inspected["vmm"]) == ("ready", "qemu")
            assert (await ok(manage, "vm_exec", {"vm": VM, "command": ["uname", "-s"]}))["stdout"] == "Linux\n"
            assert (await ok(manage, "vm_logs", {"vm": VM, "tail": 200}))["lines"]

            # Killed in the middle of a call: the call ends with an error at once, the daemon keeps serving.
            async with http_client(e2e_daemon, f"/v1/vms/{VM}/mcp") as guest:
                outcome = await call_killing_vmm(
                    guest, "run_command", {"command": "echo up; sleep 120"}, inspected["pid"], timeout_s=60
                )
                assert isinstance(outcome, MCPError) or outcome.is_error is True, outcome
                for _ in range(100):  # the exit watcher records the crash a moment after the call failed
                    if (await ok(manage, "vm_inspect", {"vm": VM}))["state"] == "crashed":
                        break
                    await anyio.sleep(0.1)
                assert (await ok(manage, "vm_inspect", {"vm": VM}))["state"] == "crashed"
                with pytest.raises(MCPError) as caught:  # crashed: not ready, the tool never runs
                    await guest.call_tool("run_command", {"command": "true"})
                assert caught.value.code == INVALID_STATE
            assert VM in {vm["name"] for vm in (await ok(manage, "vm_list", {}))["vms"]}
            await ok(manage, "vm_rm", {"vm": VM, "force": True})

    try:
        anyio.run(scenario)
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", VM, check=False)
