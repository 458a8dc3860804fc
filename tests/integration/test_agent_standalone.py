"""The agent as the image builder ships it: only nexus/__init__.py, nexus/protocol/ and nexus/agent/
copied into a bare directory, run by ``python3 -S`` (no site-packages) - i.e. standard library only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nexus

PKG_DIR = Path(nexus.__file__).resolve().parent


def _ship(tmp_path: Path) -> Path:
    root = tmp_path / "guest-lib"
    (root / "nexus").mkdir(parents=True)
    shutil.copy(PKG_DIR / "__init__.py", root / "nexus" / "__init__.py")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PKG_DIR / "protocol", root / "nexus" / "protocol", ignore=ignore)
    shutil.copytree(PKG_DIR / "agent", root / "nexus" / "agent", ignore=ignore)
    return root


def test_imports_only_the_standard_library(tmp_path: Path) -> None:
    root = _ship(tmp_path)
    probe = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "import nexus.agent, nexus.agent.main, nexus.protocol;"
        "extra = {m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'__main__'};"
        "print(json.dumps(sorted(extra)))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-I", "-c", probe, str(root)], capture_output=True, text=True, check=True, timeout=30
    )
    assert json.loads(out.stdout) == ["nexus"]


def test_shipped_agent_serves_mcp_on_stdio(tmp_path: Path) -> None:
    root = _ship(tmp_path)
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "run_command", "arguments": {"command": ["echo", "from the guest"]}}},
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "nexus.agent", "--control", "none", "--mcp", "stdio", "--cmdline", "/dev/null"],
        input="".join(json.dumps(line) + "\n" for line in lines),
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    replies = {msg["id"]: msg for msg in map(json.loads, proc.stdout.splitlines())}
    assert set(replies) == {1, 2}  # the notification got no reply
    assert replies[1]["result"]["protocolVersion"] == "2024-11-05"
    assert replies[2]["result"]["structuredContent"]["stdout"] == "from the guest\n"
