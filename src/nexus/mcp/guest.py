"""The MCP server behind ``/v1/vms/{ref}/mcp``: that VM's guest tools, proxied to its agent.

``tools/list`` and ``tools/call`` go through ``GuestService``; the VM is the ``ref`` in the HTTP path of each
request. A tool's own failure (unknown tool, bad arguments, a command that failed) comes back from the agent as an
``isError`` result and is passed through as is. A VM that cannot serve (unknown, stopped, paused, its agent link
not open or dropped mid-call) is a JSON-RPC error from ``nexus.mcp.errors``: the tool never ran, so there is no
tool result to give. Progress the agent reports while a tool runs is forwarded when the client sent a
``progressToken``. This module does not serve HTTP; ``nexus.mcp.endpoints`` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from nexus import __version__
from nexus.domain import InvalidState, NexusError, NotFound, Unavailable, Vm, VmState
from nexus.mcp.audit import audited, path_ref
from nexus.mcp.errors import to_mcp_error
from nexus.mcp.progress import Report, wants_progress, with_progress
from nexus.mcp.sizing import fit
from nexus.mcp.workspace import VM_TOOLS, Workspaces, call_vm_tool, is_vm_tool
from nexus.protocol import AGENT_INSTRUCTIONS, INVALID_REQUEST
from nexus.services.audit import AuditService
from nexus.services.guest import GuestService

Ctx = ServerRequestContext[Any, Any]


def _vm_ref(ctx: Ctx) -> str:
    request = ctx.request
    ref = request.path_params.get("ref") if isinstance(request, Request) else None
    if not isinstance(ref, str) or not ref:
        raise MCPError(INVALID_REQUEST, "this endpoint serves one VM: use /v1/vms/{ref}/mcp")
    return ref


INSTRUCTIONS = (
    AGENT_INSTRUCTIONS
    + " workspace_snapshot and workspace_rollback (served by nexusd) checkpoint this computer's drives and roll "
    "them back."
)


def _next_step(vm: Vm) -> str:
    """What to do about a VM that cannot serve tools, in the words of the tools and the CLI that can."""
    if vm.state in (VmState.CREATED, VmState.STOPPED, VmState.CRASHED, VmState.FAILED):
        return f"start it with the vm_start tool (/mcp) or `nexusctl vm start {vm.name}`"
    if vm.state is VmState.PAUSED:
        return f"resume it with `nexusctl vm resume {vm.name}`"
    if vm.state in (VmState.STARTING, VmState.STOPPING):
        return "try again in a few seconds"
    return f"its agent does not answer: see `nexusctl vm logs {vm.name}`, or restart the VM"


def explained(exc: NexusError, ref: str, lookup: Callable[[str], Vm] | None) -> NexusError:
    """``exc`` with the VM's name, state and the next step, when the VM cannot serve (stopped, paused, ...)."""
    if lookup is None or not isinstance(exc, InvalidState | Unavailable):
        return exc
    try:
        vm = lookup(ref)
    except NotFound:
        return exc
    if vm.state is VmState.READY and isinstance(exc, Unavailable):
        return exc  # ready, and the call itself failed (timeout, link dropped mid-call): the message says so
    return type(exc)(f"VM {vm.name} is {vm.state}: {_next_step(vm)}")


def guest_server(
    guest: GuestService,
    workspaces: Workspaces | None = None,
    lookup: Callable[[str], Vm] | None = None,
    audit: AuditService | None = None,
) -> Server[Any]:
    """With ``workspaces``, nexusd serves its own ``workspace_*`` tools beside the agent's (``nexus.mcp.workspace``).
    ``lookup`` (VM by ref) lets errors say what state a VM is in and what to do about it. Each call is recorded in
    ``audit`` when given (``nexus.mcp.audit``)."""
    host_tools = list(VM_TOOLS) if workspaces is not None else []

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        ref = _vm_ref(ctx)
        try:
            tools = await guest.list_tools(ref)
        except NexusError as exc:
            raise to_mcp_error(explained(exc, ref, lookup)) from exc
        return types.ListToolsResult(tools=[*(types.Tool.model_validate(tool) for tool in tools), *host_tools])

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        ref = _vm_ref(ctx)
        arguments = dict(params.arguments or {})
        if workspaces is not None and is_vm_tool(params.name):
            return await call_vm_tool(workspaces, ref, params.name, arguments)
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
            raise to_mcp_error(explained(exc, ref, lookup)) from exc
        return types.CallToolResult.model_validate(fit(params.name, result))

    return Server(
        "nexus-vm",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=audited(call_tool, audit, path_ref),
    )
