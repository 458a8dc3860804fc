"""Every nexusctl command's --help renders (help texts are Rich markup: a stray "[...]" breaks them)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer

from nexus.cli.main import app, main


def _paths(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name in command.list_commands(None) if hasattr(command, "list_commands") else ():  # a group
        sub = command.get_command(None, name)
        yield from _paths(sub, (*prefix, name))


PATHS = list(_paths(typer.main.get_command(app)))


def test_every_command_is_listed() -> None:
    assert ("vm", "create") in PATHS and ("drive", "attach") in PATHS and ("admin", "cleanup-network") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "nexusctl")
def test_help_renders(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: nexusctl" in out


def test_commands_do_not_import_the_mcp_sdk_or_httpx_cli() -> None:
    """Every nexusctl command is a new process: the MCP SDK (~0.6 s) is imported by mcp-bridge alone, and httpx's own
    command-line tool (click, pygments) never."""
    heavy = ("mcp", "asyncio", "httpx._main", "pygments")
    code = f"import sys, nexus.cli.main; print(sorted(m for m in {heavy!r} if sys.modules.get(m)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_bridge_keepalive_default_is_the_bridges() -> None:
    from nexus.cli import mcp_bridge
    from nexus.cli.main import mcp_bridge_command

    default = inspect.signature(mcp_bridge_command).parameters["keepalive"].default
    assert default == mcp_bridge.KEEPALIVE_S
