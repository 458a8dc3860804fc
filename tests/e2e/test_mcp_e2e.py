"""A real QEMU VM's tools through nexusd's MCP endpoint, with the official SDK client."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.conftest import nexusctl, nexusctl_json
from tests.helpers import Daemon

pytestmark = pytest.mark.vm


def test_vm_tools_over_mcp(e2e_daemon: Daemon) -> None:
    nexusctl_json(e2e_daemon, "vm", "run", "e2e-mcp")

    async def scenario() -> None:
        http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(e2e_daemon.socket)), timeout=120)
        url = "http://nexusd/v1/vms/e2e-mcp/mcp"
        async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"file_read", "file_write", "run_command"} <= names
            ran = await client.call_tool("run_command", {"command": ["uname", "-s"]})
            assert not ran.is_error
            assert ran.structured_content is not None
            assert ran.structured_content["stdout"] == "Linux\n"
            missing = await client.call_tool("file_read", {"path": "/no/such/file"})
            assert missing.is_error

    try:
        anyio.run(scenario)
    finally:
        nexusctl(e2e_daemon, "vm", "rm", "--force", "e2e-mcp", check=False)
