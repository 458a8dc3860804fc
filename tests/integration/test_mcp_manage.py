"""``/mcp``: nexusd's management tools through a real nexusd, driven by the official MCP SDK client over the Unix
socket; the VMs are the fake Firecracker's (a real agent, no kernel booted)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from nexus.protocol import INVALID_PARAMS
from nexus.schemas import VmCreate
from tests.fakes.firecracker_host import running_daemon
from tests.helpers import Daemon, call_killing_vmm
from tests.integration.test_mcp_vm import pytestmark  # noqa: F401  (the same skips)

TOOLS = {"vm_list", "vm_create", "vm_start", "vm_stop", "vm_rm", "vm_inspect", "vm_logs", "vm_exec"}
WORKSPACE_TOOLS = {
    "drive_list",
    "drive_create",
    "drive_attach",
    "drive_detach",
    "drive_resize",
    "drive_rm",
    "snapshot_create",
    "snapshot_list",
    "snapshot_rollback",
    "snapshot_rm",
    "vm_clone",
    "vm_checkpoint",
    "vm_restore",
    "vm_fork",
}
POLICY_TOOLS = {"policy_allow", "policy_list", "policy_remove"}


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    with running_daemon("nxmg-") as d:
        yield d


@asynccontextmanager
async def manage_client(daemon: Daemon) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(
        transport=httpx2.AsyncHTTPTransport(uds=str(daemon.socket)), timeout=httpx2.Timeout(30, read=300)
    )
    async with http, Client(streamable_http_client("http://nexusd/mcp", http_client=http), mode="legacy") as client:
        yield client


async def _ok(client: Client, name: str, args: dict[str, Any], **kw: Any) -> Any:
    result = await client.call_tool(name, args, **kw)
    assert result.is_error is False, result.content
    return result.structured_content


async def _refused(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, args)
    assert result.is_error is True, result.structured_content
    error: dict[str, Any] = result.structured_content["error"]
    return error


def test_management_tools(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with manage_client(daemon) as client:
            assert client.server_info is not None and client.server_info.name == "nexus"
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS | WORKSPACE_TOOLS | POLICY_TOOLS

            bad_port = await _refused(client, "vm_create", {"name": "mg-bad", "publish": ["80"]})
            assert bad_port["code"] == "invalid" and "HOSTPORT:GUESTPORT" in bad_port["message"]
            # this nexusd runs with --no-network: a NIC cannot be had, and asking says so
            no_net = await _refused(client, "vm_create", {"name": "mg-bad", "publish": ["8080:80"]})
            assert no_net["code"] == "conflict" and "networking is off" in no_net["message"]
            assert (await _ok(client, "vm_list", {}))["vms"] == []  # refusals created nothing
            created = await _ok(
                client, "vm_create", {"name": "mg-one", "mem_mib": 256, "tags": ["t1"], "network": False}
            )
            assert created["network"] is None
            assert (created["name"], created["state"], created["tags"]) == ("mg-one", "created", ["t1"])
            listed = await _ok(client, "vm_list", {"tags": ["t1"]})
            assert [vm["name"] for vm in listed["vms"]] == ["mg-one"]
            assert (await _ok(client, "vm_list", {"state": "ready"}))["vms"] == []

            not_ready = await _refused(client, "vm_exec", {"vm": "mg-one", "command": "true"})
            assert not_ready["code"] == "invalid_state"

            ready = await _ok(client, "vm_start", {"vm": "mg-one"})
            assert ready["state"] == "ready" and ready["vmm"] == "firecracker"

            progress: list[str | None] = []

            async def on_progress(_value: float, _total: float | None, message: str | None) -> None:
                progress.append(message)

            ran = await _ok(
                client,
                "vm_exec",
                {"vm": "mg-one", "command": "echo a; echo b >&2; exit 3"},
                progress_callback=on_progress,
            )
            assert (ran["exit_code"], ran["stdout"], ran["stderr"]) == (3, "a\n", "b\n")
            assert sorted(m or "" for m in progress) == ["a\n", "b\n"]
            argv = await _ok(client, "vm_exec", {"vm": "mg-one", "command": ["echo", "argv"]})
            assert argv["stdout"] == "argv\n"

            assert (await _refused(client, "vm_exec", {"vm": "mg-one", "command": 42}))["code"] == "invalid"
            assert (await _refused(client, "vm_exec", {"vm": "mg-one", "command": "x", "bogus": 1}))["code"] == (
                "invalid"
            )
            assert (await _refused(client, "vm_create", {}))["code"] == "invalid"
            # the arguments are the REST body's model: its schema, its checks, its one-line messages
            bogus = await _refused(client, "vm_exec", {"vm": "mg-one", "command": "x", "bogus": 1})
            assert bogus["message"] == "bogus: unknown field"
            too_big = await _refused(client, "vm_create", {"name": "mg-big", "vcpus": 1000})
            assert too_big["code"] == "invalid" and "vcpus" in too_big["message"]
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert listed["vm_create"].input_schema == VmCreate.model_json_schema()

            inspected = await _ok(client, "vm_inspect", {"vm": "mg-one"})
            assert [h["to_state"] for h in inspected["history"]] == ["created", "starting", "ready"]  # as REST names it
            assert isinstance((await _ok(client, "vm_logs", {"vm": "mg-one", "tail": 5}))["lines"], list)

            assert (await _ok(client, "vm_stop", {"vm": "mg-one"}))["state"] == "stopped"
            assert (await _ok(client, "vm_rm", {"vm": "mg-one"}))["removed"] == "mg-one"
            assert (await _refused(client, "vm_inspect", {"vm": "mg-one"}))["code"] == "not_found"

            with pytest.raises(MCPError) as caught:
                await client.call_tool("vm_fly", {})
            assert caught.value.code == INVALID_PARAMS and caught.value.data == {"code": "invalid"}

    anyio.run(scenario)


def test_vm_killed_during_exec_is_an_error_not_a_hang(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with manage_client(daemon) as client:
            await _ok(client, "vm_create", {"name": "mg-doomed", "mem_mib": 256})
            pid = (await _ok(client, "vm_start", {"vm": "mg-doomed"}))["pid"]
            result = await call_killing_vmm(
                client, "vm_exec", {"vm": "mg-doomed", "command": "echo up; sleep 60"}, pid, timeout_s=20
            )
            assert not isinstance(result, MCPError), result
            assert result.is_error is True and result.structured_content["error"]["code"] == "unavailable"
            assert (await _ok(client, "vm_list", {}))["vms"][0]["name"] == "mg-doomed"  # still serving

    anyio.run(scenario)


def test_nexusd_stops_promptly_with_an_mcp_session_open(daemon: Daemon) -> None:
    """An open session (with its SSE GET stream) is closed when shutdown begins, not at uvicorn's timeout."""

    async def scenario() -> None:
        async with manage_client(daemon) as client:
            await client.list_tools()
            await anyio.sleep(0.3)  # the SDK client opens its standalone GET stream after initialization
            started = time.monotonic()
            assert await anyio.to_thread.run_sync(daemon.stop) == 0
            assert time.monotonic() - started < 3
        assert "timeout graceful shutdown exceeded" not in daemon.log_text()

    anyio.run(scenario)


def test_mcp_and_rest_describe_a_vm_with_one_model(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with manage_client(daemon) as client:
            made = await _ok(client, "vm_create", {"name": "mg-same", "mem_mib": 256, "tags": ["x=1"]})
            inspected = await _ok(client, "vm_inspect", {"vm": "mg-same"})
        transport = httpx.AsyncHTTPTransport(uds=str(daemon.socket))
        async with httpx.AsyncClient(transport=transport, base_url="http://nexusd") as http:
            rest = (await http.get("/v1/vms/mg-same")).json()
        assert made == rest  # same fields, same spelling: nexus.schemas.VmOut on both edges
        assert {k: v for k, v in inspected.items() if k != "history"} == rest

    anyio.run(scenario)


def test_portal_policy_tools(daemon: Daemon) -> None:
    async def scenario() -> None:
        async with manage_client(daemon) as client:
            rule = await _ok(client, "policy_allow", {"portal": "p", "work": "tag:team=a", "tools": ["run_command"]})
            assert (rule["portal"], rule["work"], rule["tools"]) == ("p", "tag:team=a", ["run_command"])
            assert [r["id"] for r in (await _ok(client, "policy_list", {}))["rules"]] == [rule["id"]]
            bad = await _refused(client, "policy_allow", {"portal": "@created", "work": "w", "tools": ["*"]})
            assert bad["code"] == "invalid" and "not portals" in bad["message"]
            assert await _ok(client, "policy_remove", {"id": rule["id"]}) == {"removed": rule["id"]}
            gone = await _refused(client, "policy_remove", {"id": rule["id"]})
            assert gone["code"] == "not_found"
            assert (await _ok(client, "policy_list", {}))["rules"] == []

    anyio.run(scenario)
