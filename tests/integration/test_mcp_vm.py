"""``/v1/vms/{ref}/mcp`` through a real nexusd, driven by the official MCP SDK client over the Unix socket.

The VM is the fake Firecracker's (see ``test_firecracker_driver``): a real nexus agent behind a hybrid vsock
muxer, no kernel booted. Covers the handshake, tools/list, tools/call with streamed progress, an unknown tool and
bad arguments (``isError`` results), a VM that is not ready and a VM killed in the middle of a call (JSON-RPC
errors, no hang), and raw Streamable HTTP details (sessions, notifications answered 202, JSON vs SSE).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import TextContent

from nexus.mcp.endpoints import MAX_REQUEST_BODY_BYTES
from nexus.mcp.errors import INVALID_STATE, NOT_FOUND, UNAVAILABLE
from nexus.protocol import INVALID_PARAMS
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import _busybox, running_daemon
from tests.helpers import Daemon, call_killing_vmm

pytestmark = [pytest.mark.skipif(_busybox() is not None, reason=str(_busybox()))]

ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One nexusd for the module, with a ready VM ``mcp-one`` and a created-but-stopped ``mcp-cold``."""
    with running_daemon("nxmcp-") as d:
        with NexusClient(d.socket, timeout_s=60) as api:
            api.create_vm(name="mcp-one", mem_mib=256)
            api.start_vm("mcp-one")
            api.create_vm(name="mcp-cold", mem_mib=256)
        yield d


def _url(ref: str) -> str:
    return f"http://nexusd/v1/vms/{ref}/mcp"


@asynccontextmanager
async def mcp_client(daemon: Daemon, ref: str, mode: str = "legacy") -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(
        transport=httpx2.AsyncHTTPTransport(uds=str(daemon.socket)), timeout=httpx2.Timeout(30, read=300)
    )
    async with http, Client(streamable_http_client(_url(ref), http_client=http), mode=mode) as client:
        yield client


def test_tools_through_the_vm_endpoint(daemon: Daemon, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-one") as client:
            assert client.server_info is not None and client.server_info.name == "nexus-vm"
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert {"run_command", "file_read", "file_write", "list_dir"} <= set(tools)
            assert tools["file_read"].input_schema["required"] == ["path"]

            messages: list[str | None] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # ProgressFnT
                messages.append(message)

            run = await client.call_tool(
                "run_command", {"command": "echo a; sleep 0.1; echo b >&2"}, progress_callback=on_progress
            )
            assert run.is_error is False
            assert run.structured_content is not None
            assert (run.structured_content["stdout"], run.structured_content["stderr"]) == ("a\n", "b\n")
            assert run.structured_content["exit_code"] == 0
            assert messages == ["a\n", "b\n"]

            quiet = await client.call_tool("run_command", {"command": ["echo", "no progress asked"]})
            assert quiet.structured_content is not None
            assert quiet.structured_content["stdout"] == "no progress asked\n"

            path = str(tmp_path / "mcp.txt")  # the fake's agent runs on this host
            await client.call_tool("file_write", {"path": path, "content": "through MCP"})
            read = await client.call_tool("file_read", {"path": path})
            assert read.is_error is False and isinstance(read.content[0], TextContent)
            assert read.content[0].text == "through MCP"

            with pytest.raises(MCPError) as unknown:  # a protocol error, as the spec lists it: the tool never ran
                await client.call_tool("no_such_tool", {})
            assert unknown.value.code == INVALID_PARAMS and "unknown tool" in unknown.value.message
            bad = await client.call_tool("file_read", {"path": 42})
            assert bad.is_error is True

    anyio.run(scenario)


def test_a_large_file_in_one_tool_call(daemon: Daemon, tmp_path: Path) -> None:
    """MCP has no chunked upload: a 6 MiB binary file_write (8 MiB of base64) is one POST, over the REST API's 1 MiB
    cap but within the MCP endpoints' own; a body past that is a 413, and the endpoint keeps serving."""
    data = os.urandom(6 * 1024 * 1024)
    path = str(tmp_path / "big.bin")

    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-one") as client:
            wrote = await client.call_tool(
                "file_write", {"path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}
            )
            assert wrote.is_error is False, wrote.content
            # Reading it back in one answer would pass the SDK client's 1 MiB SSE event cap: page it.
            back = b""
            while len(back) < len(data):
                read = await client.call_tool(
                    "file_read", {"path": path, "encoding": "base64", "offset": len(back), "length": 256 * 1024}
                )
                assert read.structured_content is not None
                back += base64.b64decode(read.structured_content["content"])
            assert back == data
        async with httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(daemon.socket))) as http:
            huge = await http.post(_url("mcp-one"), content=b"x" * (MAX_REQUEST_BODY_BYTES + 1))
            assert huge.status_code == 413
        async with mcp_client(daemon, "mcp-one") as client:
            assert "file_read" in {t.name for t in (await client.list_tools()).tools}

    anyio.run(scenario)


def test_sdk_auto_mode(daemon: Daemon) -> None:
    """The SDK's default mode negotiates the 2026 stateless era; the VM comes from the path there too."""

    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-one", mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            assert "run_command" in {t.name for t in (await client.list_tools()).tools}
            run = await client.call_tool("run_command", {"command": ["echo", "modern"]})
            assert run.structured_content is not None and run.structured_content["stdout"] == "modern\n"

    anyio.run(scenario)


def test_vm_not_ready_and_unknown_vm_are_jsonrpc_errors(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-cold") as client:
            with pytest.raises(MCPError) as caught:
                await client.list_tools()
            assert caught.value.code == INVALID_STATE
            # it names the VM, its state and what to do next
            assert caught.value.message == (
                "VM mcp-cold is created: start it with the vm_start tool (/mcp) or `nexusctl vm start mcp-cold`"
            )
            assert caught.value.data == {"code": "invalid_state"}
            with pytest.raises(MCPError) as caught:
                await client.call_tool("run_command", {"command": "true"})
            assert caught.value.code == INVALID_STATE
        async with mcp_client(daemon, "no-such-vm") as client:
            with pytest.raises(MCPError) as caught:
                await client.list_tools()
            assert caught.value.code == NOT_FOUND and caught.value.data == {"code": "not_found"}

    anyio.run(scenario)


def test_streamable_http_wire(daemon: Daemon) -> None:
    """Raw HTTP: the session header, 202 for a notification, an SSE or JSON answer as the client accepts."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd") as http:
        client_info = {"name": "t", "version": "0"}
        params = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": client_info}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        r = http.post("/v1/vms/mcp-one/mcp", json=init, headers={"accept": ACCEPT})
        assert r.status_code == 200, r.text
        session = r.headers["mcp-session-id"]
        headers = {"accept": ACCEPT, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert http.post("/v1/vms/mcp-one/mcp", json=note, headers=headers).status_code == 202
        listed = http.post(
            "/v1/vms/mcp-one/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers
        )
        assert listed.status_code == 200
        assert listed.headers["content-type"].startswith("text/event-stream")
        assert '"run_command"' in listed.text
        assert http.delete("/v1/vms/mcp-one/mcp", headers=headers).status_code == 200
        again = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
        gone = http.post("/v1/vms/mcp-one/mcp", json=again, headers=headers)
        assert gone.status_code == 404
        assert http.get("/openapi.json").json()["paths"].get("/v1/vms/{ref}/mcp") is None


def test_vm_killed_during_a_call_is_an_error_not_a_hang(daemon: Daemon) -> None:
    with NexusClient(daemon.socket, timeout_s=60) as api:
        api.create_vm(name="mcp-doomed", mem_mib=256)
        pid = api.start_vm("mcp-doomed")["pid"]

    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-doomed") as client:
            error = await call_killing_vmm(client, "run_command", {"command": "echo up; sleep 60"}, pid, timeout_s=20)
            assert isinstance(error, MCPError), error
            assert error.code == UNAVAILABLE and "went away" in error.message
        # The daemon keeps serving the others.
        async with mcp_client(daemon, "mcp-one") as client:
            again = await client.call_tool("run_command", {"command": ["echo", "still here"]})
            assert again.structured_content is not None and again.structured_content["stdout"] == "still here\n"

    anyio.run(scenario)
