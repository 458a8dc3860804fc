"""The MCP server behind ``/v1/vms/{ref}/mcp``: that VM's guest tools, proxied to its agent.

``tools/list`` and ``tools/call`` go through ``GuestService``; the VM is the ``ref`` in the HTTP path of each
request. A tool's own failure (unknown tool, bad arguments, a command that failed) comes back from the agent as an
``isError`` result and is passed through as is. A VM that cannot serve (unknown, stopped, paused, its agent link
not open or dropped mid-call) is a JSON-RPC error from ``nexus.mcp.errors``: the tool never ran, so there is no
tool result to give. Progress the agent reports while a tool runs is forwarded when the client sent a
``progressToken``. This module does not serve HTTP; ``nexus.mcp.endpoints`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from nexus import __version__
from nexus.domain import NexusError
from nexus.mcp.errors import to_mcp_error
from nexus.mcp.progress import Report, wants_progress, with_progress
from nexus.mcp.workspace import VM_TOOLS, call_vm_tool, is_vm_tool
from nexus.protocol import INVALID_REQUEST
from nexus.services import SnapshotService
from nexus.services.guest import GuestService

Ctx = ServerRequestContext[Any, Any]


def _vm_ref(ctx: Ctx) -> str:
    request = ctx.request
    ref = request.path_params.get("ref") if isinstance(request, Request) else None
    if not isinstance(ref, str) or not ref:
        raise MCPError(INVALID_REQUEST, "this endpoint serves one VM: use /v1/vms/{ref}/mcp")
    return ref


def guest_server(guest: GuestService, snapshots: SnapshotService | None = None) -> Server[Any]:
    """With ``snapshots``, nexusd serves its own ``workspace_*`` tools beside the agent's (``nexus.mcp.workspace``)."""
    host_tools = list(VM_TOOLS) if snapshots is not None else []

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        try:
            tools = await guest.list_tools(_vm_ref(ctx))
        except NexusError as exc:
            raise to_mcp_error(exc) from exc
        return types.ListToolsResult(tools=[*(types.Tool.model_validate(tool) for tool in tools), *host_tools])

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        ref = _vm_ref(ctx)
        arguments = dict(params.arguments or {})
        if snapshots is not None and is_vm_tool(params.name):
            return await call_vm_tool(snapshots, ref, params.name, arguments)
        try:
            if not wants_progress(ctx):
                result = await guest.call_tool(ref, params.name, arguments)
            else:

                def call(report: Report) -> Awaitable[dict[str, Any]]:
                    def on_progress(note: dict[str, Any]) -> None:
                        message = note.get("message")
                        report(
                            float(note.get("progress", 0)),
                            note.get("total"),
                            message if isinstance(message, str) else None,
                        )

                    return guest.call_tool(ref, params.name, arguments, on_progress=on_progress)

                result = await with_progress(ctx, call)
        except NexusError as exc:
            raise to_mcp_error(exc) from exc
        return types.CallToolResult.model_validate(result)

    return Server(
        "nexus-vm",
        version=__version__,
        instructions="Tools of one Nexus microVM, served by its agent.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
