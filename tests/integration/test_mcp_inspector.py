"""The MCP Inspector's CLI (a third-party MCP client, installed by scripts/bootstrap.sh) lists and calls a VM's tools
through `nexusctl mcp-bridge`, against a real nexusd and a real agent (behind the fake Firecracker)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api_client import NexusClient
from tests.fakes.firecracker_host import FIRECRACKER_SKIPS, firecracker_daemon
from tests.helpers import REPO, Daemon

INSPECTOR = REPO / ".tools" / "node_modules" / ".bin" / "mcp-inspector"

pytestmark = [
    *FIRECRACKER_SKIPS,
    pytest.mark.skipif(
        not INSPECTOR.exists(), reason=f"no MCP Inspector at {INSPECTOR} (scripts/bootstrap.sh installs it with npm)"
    ),
]


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="nxi-"))
    d = firecracker_daemon(base)
    try:
        with NexusClient(d.socket, timeout_s=60) as client:
            client.create_vm(name="box")
            client.start_vm("box")
        yield d
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


def inspect(daemon: Daemon, *args: str) -> dict[str, object]:
    bridge = [sys.executable, "-m", "nexus.cli.main", "--socket", str(daemon.socket), "mcp-bridge", "box"]
    done = subprocess.run([str(INSPECTOR), "--cli", *bridge, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_inspector_lists_tools(daemon: Daemon) -> None:
    tools = inspect(daemon, "--method", "tools/list")["tools"]
    assert isinstance(tools, list)
    assert {"file_read", "file_write", "file_delete", "list_dir", "run_command"} <= {t["name"] for t in tools}


def test_inspector_calls_tools(daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "x.txt"  # the fake's "guest" agent runs on this host
    ran = inspect(daemon, "--method", "tools/call", "--tool-name", "run_command", "--tool-arg", "command=echo hi")
    assert ran["isError"] is False
    assert ran["structuredContent"] == {**ran["structuredContent"], "exit_code": 0, "stdout": "hi\n"}  # type: ignore[dict-item]
    wrote = inspect(
        daemon,
        "--method",
        "tools/call",
        "--tool-name",
        "file_write",
        "--tool-arg",
        f"path={target}",
        "--tool-arg",
        "content=from the inspector",
    )
    assert wrote["isError"] is False
    read = inspect(daemon, "--method", "tools/call", "--tool-name", "file_read", "--tool-arg", f"path={target}")
    assert read["structuredContent"]["content"] == "from the inspector"  # type: ignore[index]
    missing = inspect(daemon, "--method", "tools/call", "--tool-name", "file_read", "--tool-arg", "path=/nope")
    assert missing["isError"] is True
