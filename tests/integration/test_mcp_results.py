"""Results sized for models and clients, through a real nexusd and the official SDK's HTTP client with its default
limits (it refuses a server-sent event over 1 MiB): big files, long output and big directories come back in pages
or head+tail, never as a transport error; the one-message guard; progress heartbeats; titles and annotations;
DNS-rebinding protection and the transport rules nexusd meets (batches, protocol versions).

The VM is the fake Firecracker's (a real agent on this host, no kernel): tool paths are this host's paths.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from nexus.agent.tools import DEFAULT_OUTPUT_BYTES, MAX_OUTPUT_BYTES
from nexus.agent.tools.files import DEFAULT_DIR_ENTRIES, DEFAULT_READ_BYTES
from nexus.mcp.endpoints import BATCH_REFUSAL, COUNTER_OFFER
from nexus.mcp.sizing import MAX_RESULT_BYTES
from nexus.protocol import INVALID_REQUEST
from tests.helpers import Daemon
from tests.integration.test_mcp_vm import (
    daemon,  # noqa: F401  (the module's nexusd with its VMs)
    mcp_client,
    pytestmark,  # noqa: F401
)

ACCEPT = "application/json, text/event-stream"


def _text(result: Any) -> str:
    return str(result.content[0].text)


def test_a_5_mib_file_reads_in_pages(daemon: Daemon) -> None:  # noqa: F811
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.txt"
        data = b"".join(b"line %07d\n" % i for i in range(5 * 2**20 // 13 + 1))
        path.write_bytes(data)

        async def scenario() -> None:
            async with mcp_client(daemon, "mcp-one") as client:
                first = await client.call_tool("file_read", {"path": str(path)})
                assert first.is_error is False and first.structured_content is not None
                assert first.structured_content["bytes_read"] == DEFAULT_READ_BYTES
                assert _text(first).endswith(f"read on with offset={DEFAULT_READ_BYTES} …]")
                got, offset, eof = b"", 0, False
                while not eof:  # the largest pages the tool allows still fit one message
                    page = await client.call_tool("file_read", {"path": str(path), "offset": offset, "length": 2**19})
                    assert page.structured_content is not None, _text(page)
                    got += page.structured_content["content"].encode()
                    offset, eof = len(got), page.structured_content["eof"]
                assert got == data

        anyio.run(scenario)


def test_a_million_lines_keep_head_and_tail(daemon: Daemon) -> None:  # noqa: F811
    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-one") as client:
            run = await client.call_tool("run_command", {"command": "seq 1 1000000", "timeout_s": 120})
            assert run.is_error is False and run.structured_content is not None
            out = run.structured_content
            assert out["truncated"] is True and out["stdout_bytes"] == 6888896
            assert len(out["stdout"]) <= DEFAULT_OUTPUT_BYTES + 64
            assert out["stdout"].startswith("1\n2\n3\n") and out["stdout"].endswith("999999\n1000000\n")
            text = _text(run)
            assert text.startswith("exit code 0") and "bytes omitted …]" in text and text.endswith("\n1000000")
            assert len(text) <= DEFAULT_OUTPUT_BYTES + 200

    anyio.run(scenario)


def test_a_directory_of_20000_files_pages_without_a_hole(daemon: Daemon) -> None:  # noqa: F811
    with tempfile.TemporaryDirectory() as tmp:
        names = sorted(f"file-{i:05d}" for i in range(20_000))
        for name in names:
            (Path(tmp) / name).touch()

        async def scenario() -> None:
            async with mcp_client(daemon, "mcp-one") as client:
                seen: list[str] = []
                offset: int | None = 0
                while offset is not None:
                    page = await client.call_tool("list_dir", {"path": tmp, "offset": offset, "limit": 5000})
                    assert page.structured_content is not None, _text(page)
                    assert page.structured_content["total"] == 20_000
                    seen += [e["name"] for e in page.structured_content["entries"]]
                    offset = page.structured_content["next_offset"]
                assert seen == names
                default = await client.call_tool("list_dir", {"path": tmp})
                assert default.structured_content is not None
                assert len(default.structured_content["entries"]) == DEFAULT_DIR_ENTRIES
                assert _text(default).endswith(f"list on with offset={DEFAULT_DIR_ENTRIES} …]")

        anyio.run(scenario)


def test_a_result_too_big_for_one_message_is_slimmed_not_a_transport_error(daemon: Daemon) -> None:  # noqa: F811
    # ~340 KiB of base64 on each stream (no newlines): structured + text copies are ~1.4 MB together
    script = "head -c 300000 /dev/urandom | base64 -w0; head -c 300000 /dev/urandom | base64 -w0 >&2"
    args = {"command": script, "max_output_bytes": MAX_OUTPUT_BYTES}

    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-one") as client:
            run = await client.call_tool("run_command", args)
            assert run.is_error is False and run.structured_content is not None
            assert len(run.structured_content["stdout"]) > 200_000 and len(run.structured_content["stderr"]) > 200_000
            assert "text copy dropped to fit one MCP message" in _text(run)
            size = len(json.dumps(run.model_dump(by_alias=True, exclude_none=True)))
            assert size <= MAX_RESULT_BYTES

    anyio.run(scenario)


def test_silent_commands_send_heartbeat_progress(daemon: Daemon) -> None:  # noqa: F811
    async def scenario() -> None:
        notes: list[tuple[float, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # ProgressFnT
            notes.append((progress, message))

        async with mcp_client(daemon, "mcp-one") as client:
            run = await client.call_tool(
                "run_command", {"command": "echo go; sleep 6; echo done"}, progress_callback=on_progress
            )
            assert run.structured_content is not None and run.structured_content["stdout"] == "go\ndone\n"
        messages = [m for _, m in notes]
        assert messages[0] == "go\n" and messages[-1] == "done\n"
        assert any(m is not None and m.startswith("still running (") for m in messages[1:-1]), messages
        values = [v for v, _ in notes]
        assert values == sorted(set(values)), values  # strictly increasing, heartbeats included

    anyio.run(scenario)


def test_every_tool_has_a_title_and_annotations_and_the_vm_says_how_to_use_it(daemon: Daemon) -> None:  # noqa: F811
    async def scenario() -> None:
        async with mcp_client(daemon, "mcp-one") as client:
            assert client.instructions is not None and "process_start" in client.instructions
            tools = {t.name: t for t in (await client.list_tools()).tools}
        for name, tool in tools.items():
            assert tool.title and tool.annotations is not None, name
            assert tool.annotations.read_only_hint is not None and tool.annotations.idempotent_hint is not None
        assert (reading := tools["file_read"].annotations) is not None and reading.read_only_hint is True
        assert (rollback := tools["workspace_rollback"].annotations) is not None and rollback.destructive_hint is True
        assert "max_output_bytes" in (tools["run_command"].description or "")

    anyio.run(scenario)


def _post(daemon: Daemon, path: str, body: Any, **headers: str) -> httpx.Response:  # noqa: F811
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with httpx.Client(transport=transport, base_url="http://nexusd") as http:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        base = {"accept": ACCEPT, "content-type": "application/json"}
        return http.post(path, content=content, headers={**base, **headers})


def _initialize(version: str = "2025-11-25") -> dict[str, Any]:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


@pytest.mark.parametrize("path", ["/mcp", "/v1/vms/mcp-one/mcp"])
def test_dns_rebinding_protection(daemon: Daemon, path: str) -> None:  # noqa: F811
    for headers in ({"host": "evil.example"}, {"origin": "http://evil.example"}, {"origin": "null"}):
        refused = _post(daemon, path, _initialize(), **headers)
        assert refused.status_code == 403, headers
        error = refused.json()["error"]
        assert error["code"] == INVALID_REQUEST and "not allowed" in error["message"]
        assert "mcp-session-id" not in refused.headers
    for headers in (
        {},
        {"host": "localhost:7777"},
        {"host": "127.0.0.1"},
        {"host": "[::1]:80", "origin": "http://localhost:3000"},
    ):
        assert _post(daemon, path, _initialize(), **headers).status_code == 200, headers


@pytest.mark.parametrize("path", ["/mcp", "/v1/vms/mcp-one/mcp"])
def test_batches_are_refused_in_one_line_and_old_revisions_get_a_counter_offer(daemon: Daemon, path: str) -> None:  # noqa: F811
    for version in ("2024-11-05", "2025-03-26"):
        answer = _post(daemon, path, _initialize(version))
        assert answer.status_code == 200
        data = next(line for line in answer.text.splitlines() if line.startswith("data: "))
        assert json.loads(data[6:])["result"]["protocolVersion"] == COUNTER_OFFER
    session = _post(daemon, path, _initialize()).headers["mcp-session-id"]
    batch = [{"jsonrpc": "2.0", "id": 2, "method": "ping"}, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}]
    refused = _post(daemon, path, batch, **{"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"})
    assert refused.status_code == 400
    assert refused.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": INVALID_REQUEST, "message": BATCH_REFUSAL},
    }
