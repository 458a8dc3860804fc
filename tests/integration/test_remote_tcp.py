"""Reaching nexusd without its Unix socket: the TCP listener with the bearer token, from the official MCP SDK
client (``/mcp``), from ``nexusctl --url`` and from ``nexusctl --url ... mcp-bridge`` with the admin token or an
agent token for the VM (a real nexusd whose VMs are the fake Firecracker's: a real agent, no kernel). Only loopback
is used. What else agent tokens may and may not do is in ``test_remote_access``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.fakes.firecracker_host import firecracker_daemon
from tests.helpers import Daemon, free_port
from tests.integration.test_mcp_vm import pytestmark  # noqa: F401  (the same skips)

TOKEN = "t0ken-for-the-tcp-listener-0123456789"


@pytest.fixture
def remote() -> Iterator[tuple[Daemon, str, Path]]:
    base = Path(tempfile.mkdtemp(prefix="nxtcp-"))
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    url = f"http://127.0.0.1:{free_port()}"
    d = firecracker_daemon(base, None, None, "--listen", url.removeprefix("http://"), "--token-file", str(token_file))
    try:
        yield d, url, token_file
    finally:
        code = d.stop()
        log = d.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


def _nexusctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_mcp_sdk_client_reaches_manage_endpoint_over_tcp(remote: tuple[Daemon, str, Path]) -> None:
    _daemon, url, _token_file = remote

    async def scenario() -> None:
        headers = {"authorization": f"Bearer {TOKEN}"}
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120))
        async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            assert "vm_create" in {t.name for t in (await client.list_tools()).tools}
            created = await client.call_tool("vm_create", {"name": "tcp-one", "mem_mib": 256})
            assert created.is_error is False
            started = await client.call_tool("vm_start", {"vm": "tcp-one"})
            assert started.is_error is False and started.structured_content is not None
            assert started.structured_content["state"] == "ready"
        async with httpx2.AsyncClient() as anonymous:
            refused = await anonymous.post(f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
            assert refused.status_code == 401
            wrong = await anonymous.post(
                f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={"authorization": "Bearer x"}
            )
            assert wrong.status_code == 401

    anyio.run(scenario)

    # The CLI and the stdio bridge over the same listener, token from a file or from $NEXUS_TOKEN.
    done = _nexusctl("--url", url, "--token-file", str(remote[2]), "--json", "vm", "list")
    assert done.returncode == 0, done.stderr
    assert b'"tcp-one"' in done.stdout
    denied = _nexusctl("--url", url, "vm", "list")
    assert denied.returncode == 1 and b"bearer token" in denied.stderr
    no_url = _nexusctl("--token-file", str(remote[2]), "vm", "list")
    assert no_url.returncode == 2 and b"only sent over TCP" in no_url.stderr

    async def bridged() -> None:
        argv = [sys.executable, "-m", "nexus.cli.main", "--url", url, "mcp-bridge", "tcp-one"]
        server = StdioServerParameters(command=argv[0], args=argv[1:], env={**os.environ, "NEXUS_TOKEN": TOKEN})
        async with Client(server, read_timeout_seconds=30) as client:
            run = await client.call_tool("run_command", {"command": ["echo", "over tcp"]})
            assert run.structured_content is not None and run.structured_content["stdout"] == "over tcp\n"

    anyio.run(bridged)

    # An agent token for tcp-one, from a file: the bridge works for that VM and for no other.
    made = _nexusctl("--socket", str(_daemon.socket), "--json", "token", "create", "--vm", "tcp-one", "--expires", "1h")
    assert made.returncode == 0, made.stderr
    agent_file = remote[2].with_name("agent-token")
    agent_file.write_text(json.loads(made.stdout)["token"] + "\n")
    denied_rest = _nexusctl("--url", url, "--token-file", str(agent_file), "vm", "list")
    assert denied_rest.returncode == 1 and b"opens only VM tcp-one's MCP endpoint" in denied_rest.stderr

    async def bridged_with_agent_token() -> None:
        argv = [sys.executable, "-m", "nexus.cli.main", "--url", url, "--token-file", str(agent_file)]
        server = StdioServerParameters(command=argv[0], args=[*argv[1:], "mcp-bridge", "tcp-one"], env=dict(os.environ))
        async with Client(server, read_timeout_seconds=30) as client:
            run = await client.call_tool("run_command", {"command": ["echo", "agent token"]})
            assert run.structured_content is not None and run.structured_content["stdout"] == "agent token\n"

    anyio.run(bridged_with_agent_token)
    # To another VM, the bridge answers the client's initialize with nexusd's refusal as a JSON-RPC error.
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
    other = subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", "--url", url, "--token-file", str(agent_file), "mcp-bridge", "x"],
        input=json.dumps(initialize) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    answer = json.loads(other.stdout.splitlines()[0])
    assert answer["id"] == 1 and "HTTP 403" in answer["error"]["message"], other.stderr
    assert "opens only VM tcp-one's MCP endpoint" in answer["error"]["message"]
