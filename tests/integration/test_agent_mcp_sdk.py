"""The official MCP Python SDK as the client of the real agent (``--mcp stdio``): proves the wire shapes
are what real MCP clients accept, for the SDK's default ``auto`` mode (server/discover probe, then the
initialize fallback) and its ``legacy`` mode. Skipped when the ``mcp`` package is not installed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import nexus

mcp = pytest.importorskip("mcp")
anyio = pytest.importorskip("anyio")

from mcp.shared.exceptions import MCPError  # noqa: E402  (after the importorskip above)

from nexus.protocol import INVALID_PARAMS  # noqa: E402

SRC_DIR = str(Path(nexus.__file__).resolve().parent.parent)


def _server() -> Any:
    return mcp.StdioServerParameters(
        command=sys.executable,
        args=["-m", "nexus.agent", "--control", "none", "--mcp", "stdio", "--cmdline", "/dev/null"],
        env={"PYTHONPATH": SRC_DIR},
    )


async def _session(mode: str, tmp_path: Path) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, _total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async with mcp.Client(_server(), mode=mode, read_timeout_seconds=20) as client:
        assert client.protocol_version == "2025-11-25"
        assert client.server_info is not None and client.server_info.name == "nexus-agent"
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"file_read", "file_write", "run_command", "list_dir", "file_delete", "system_info"} <= set(tools)
        assert tools["file_read"].input_schema["required"] == ["path"]

        path = tmp_path / "sdk.txt"
        written = await client.call_tool("file_write", {"path": str(path), "content": "from the sdk"})
        assert written.is_error is False and written.structured_content["size"] == 12
        read = await client.call_tool("file_read", {"path": str(path)})
        assert read.content[0].text == "from the sdk"
        assert read.structured_content["eof"] is True

        run = await client.call_tool(
            "run_command",
            {"command": "echo a; sleep 0.1; echo b >&2"},
            progress_callback=on_progress,
        )
        assert run.structured_content["stdout"] == "a\n" and run.structured_content["stderr"] == "b\n"
        assert [m for _, m in progress] == ["a\n", "b\n"]
        assert [v for v, _ in progress] == [2, 4]

        with pytest.raises(MCPError) as unknown:  # a protocol error, as the spec lists it: the tool never ran
            await client.call_tool("no_such_tool", {})
        assert unknown.value.code == INVALID_PARAMS and "unknown tool" in unknown.value.message


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_official_sdk_client(mode: str, tmp_path: Path) -> None:
    anyio.run(_session, mode, tmp_path)
