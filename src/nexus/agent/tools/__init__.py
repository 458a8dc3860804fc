"""The guest tools served on the MCP stream, and the ``Toolbox`` that lists and calls them.

Error policy (one behaviour, everywhere): anything wrong *inside* a call - unknown tool name, unknown
or ill-typed arguments, a missing file, a command that cannot start, any OSError - comes back as a
normal ``tools/call`` result with ``isError: true`` and a message saying what to fix. Only a call whose
params are not an object, lack a string ``name`` or have non-object ``arguments`` is a JSON-RPC error
(-32602); that is decided by ``nexus.agent.mcp_server``.
"""

from __future__ import annotations

import logging
from typing import Any

from nexus.agent.config import DEFAULT_PROCESS_DIR
from nexus.agent.processes import ProcessTable
from nexus.agent.pty_sessions import PtySessions
from nexus.agent.tools.archives import ARCHIVE_TOOLS
from nexus.agent.tools.base import Tool, ToolContext, ToolError, ToolResult
from nexus.agent.tools.commands import COMMAND_TOOLS, DEFAULT_OUTPUT_BYTES, MAX_OUTPUT_BYTES
from nexus.agent.tools.files import FILE_TOOLS, MAX_READ_BYTES
from nexus.agent.tools.processes import process_tools
from nexus.agent.tools.shells import shell_tools
from nexus.agent.tools.system import system_info_tool

__all__ = [
    "DEFAULT_OUTPUT_BYTES",
    "MAX_OUTPUT_BYTES",
    "MAX_READ_BYTES",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolResult",
    "Toolbox",
]

log = logging.getLogger("nexus.agent")


class Toolbox:
    """The fixed set of tools of one agent, and the terminal sessions its shell tools and nexusd share."""

    def __init__(self, image_id: str | None = None, process_dir: str = DEFAULT_PROCESS_DIR) -> None:
        self.terminals = PtySessions()
        tools = (
            *FILE_TOOLS,
            *ARCHIVE_TOOLS,
            *COMMAND_TOOLS,
            *process_tools(ProcessTable(process_dir)),
            *shell_tools(self.terminals),
            system_info_tool(image_id),
        )
        self.tools: dict[str, Tool] = {tool.name: tool for tool in tools}

    def list(self) -> list[dict[str, Any]]:
        """The ``tools`` array of a ``tools/list`` result."""
        return [tool.to_mcp() for tool in self.tools.values()]

    def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext | None = None) -> ToolResult:
        """Run one tool; never raises for anything the tool does."""
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult.error(f"unknown tool {name!r}; available: {', '.join(self.tools)}")
        try:
            return tool.handler(arguments, ctx or ToolContext())
        except ToolError as exc:
            return ToolResult.error(f"{name}: {exc}")
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            return ToolResult.error(f"{name}: {exc.strerror or exc}{where}")
        except ValueError as exc:
            return ToolResult.error(f"{name}: {exc}")
        except Exception as exc:
            log.exception("tool %s failed", name)
            return ToolResult.error(f"{name}: internal error: {type(exc).__name__}: {exc}")
