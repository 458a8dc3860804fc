"""The MCP server behind ``/mcp``: Nexus management as tools (vm_list, vm_create, vm_start, vm_stop, vm_rm,
vm_inspect, vm_logs, vm_exec), each one call to the services.

As the MCP spec splits them: an unknown tool is a protocol fault (a JSON-RPC error from ``nexus.mcp.errors``);
a tool that ran and was refused or failed — bad arguments, unknown VM, wrong state, a VM that went away — is an
``isError`` result whose ``structuredContent.error`` carries the domain code and message, so a model can read it
and act. ``vm_exec`` streams the command's output as progress notifications when the client sent a
``progressToken``; its result carries exit code, stdout and stderr. Serving HTTP is ``nexus.mcp.endpoints``'s job.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from pydantic import BaseModel

from nexus import __version__
from nexus.domain import Invalid, NetInfo, NexusError, Vm, VmFilter
from nexus.mcp.audit import audited, vm_argument
from nexus.mcp.errors import to_mcp_error
from nexus.mcp.progress import Report, with_progress
from nexus.mcp.sizing import fit
from nexus.protocol import command_text
from nexus.schemas import (
    StateChangeOut,
    VmArgs,
    VmCreate,
    VmExecArgs,
    VmListArgs,
    VmLogsArgs,
    VmOut,
    VmRemoveArgs,
    VmStartArgs,
    parse,
)
from nexus.services import NetworkService, VmService
from nexus.services.audit import AuditService
from nexus.services.guest import GuestService, OutputChunk

Ctx = ServerRequestContext[Any, Any]
A = TypeVar("A", bound=BaseModel)


def vm_dict(vm: Vm, net: NetInfo | None) -> dict[str, Any]:
    """A VM as REST shows it (``nexus.schemas.VmOut``): one model for every edge."""
    return VmOut.of(vm, net).model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class Hints:
    """MCP tool annotations, as the spec defines them: read-only (changes nothing), destructive (may undo or
    lose something), idempotent (the same call again has no further effect)."""

    read_only: bool
    destructive: bool
    idempotent: bool

    def annotations(self, title: str) -> types.ToolAnnotations:
        return types.ToolAnnotations(
            title=title,
            read_only_hint=self.read_only,
            destructive_hint=self.destructive,
            idempotent_hint=self.idempotent,
            open_world_hint=False,
        )


READS = Hints(read_only=True, destructive=False, idempotent=True)
ADDS = Hints(read_only=False, destructive=False, idempotent=False)  # makes something new each time
SETS = Hints(read_only=False, destructive=False, idempotent=True)  # named or absolute: a repeat changes nothing
DESTROYS = Hints(read_only=False, destructive=True, idempotent=False)
REMOVES = Hints(read_only=False, destructive=True, idempotent=True)


@dataclass(frozen=True, slots=True)
class _Tool(Generic[A]):
    """A tool: its arguments are a ``nexus.schemas`` model (the input schema is that model's JSON schema, and
    the arguments are validated by it before the handler sees them)."""

    title: str
    description: str
    args: type[A]
    handler: Callable[[Ctx, A], Awaitable[dict[str, Any]]]
    hints: Hints

    def to_mcp(self, name: str) -> types.Tool:
        return types.Tool(
            name=name,
            title=self.title,
            description=self.description,
            input_schema=self.args.model_json_schema(),
            annotations=self.hints.annotations(self.title),
        )

    async def call(self, ctx: Ctx, arguments: dict[str, Any]) -> dict[str, Any]:
        return await self.handler(ctx, parse(self.args, arguments))


Tools = dict[str, _Tool[Any]]


class _Tools:
    def __init__(self, vms: VmService, guest: GuestService, network: NetworkService) -> None:
        self.vms = vms
        self.guest = guest
        self.network = network

    def vm(self, vm: Vm) -> dict[str, Any]:
        return vm_dict(vm, self.network.info(vm.id))

    async def vm_list(self, ctx: Ctx, args: VmListArgs) -> dict[str, Any]:
        flt = VmFilter(role=args.role, state=args.state, tags=tuple(args.tags))
        return {"vms": [self.vm(vm) for vm in self.vms.find(flt)]}

    async def vm_create(self, ctx: Ctx, args: VmCreate) -> dict[str, Any]:
        return self.vm(self.vms.create(args.spec()))

    async def vm_start(self, ctx: Ctx, args: VmStartArgs) -> dict[str, Any]:
        return self.vm(await self.vms.start(args.vm, wait=args.wait))

    async def vm_stop(self, ctx: Ctx, args: VmArgs) -> dict[str, Any]:
        return self.vm(await self.vms.stop(args.vm))

    async def vm_rm(self, ctx: Ctx, args: VmRemoveArgs) -> dict[str, Any]:
        vm = self.vms.get(args.vm)
        await self.vms.remove(vm.id, force=args.force)
        return {"removed": vm.name, "id": vm.id}

    async def vm_inspect(self, ctx: Ctx, args: VmArgs) -> dict[str, Any]:
        vm = self.vms.get(args.vm)
        history = [StateChangeOut.of(h).model_dump(mode="json") for h in self.vms.history(vm.id)]
        return {**self.vm(vm), "history": history}

    async def vm_logs(self, ctx: Ctx, args: VmLogsArgs) -> dict[str, Any]:
        return {"lines": self.vms.logs(args.vm, args.tail)}

    async def vm_exec(self, ctx: Ctx, args: VmExecArgs) -> dict[str, Any]:
        streamed = 0

        def call(report: Report) -> Awaitable[dict[str, Any]]:
            def on_output(chunk: OutputChunk) -> None:
                nonlocal streamed
                streamed += len(chunk.data)
                report(float(streamed), None, chunk.data)

            return self.guest.exec(
                args.vm,
                args.command,
                on_output,
                cwd=args.cwd,
                env=args.env,
                stdin=args.stdin,
                timeout_s=args.timeout_s,
            )

        result = await with_progress(ctx, call)  # stdout/stderr: head and tail of long output, as run_command's
        keys = ("exit_code", "stdout", "stderr", "stdout_bytes", "stderr_bytes", "truncated", "timed_out", "duration_s")
        return {key: result.get(key) for key in keys}

    def table(self) -> Tools:
        return {
            "vm_list": _Tool(
                "List VMs",
                "List VMs, optionally only those in a state, of a role, or with all the given tags.",
                VmListArgs,
                self.vm_list,
                READS,
            ),
            "vm_create": _Tool(
                "Create VM",
                "Create a VM (not started). Unset sizes, image and kernel come from nexusd's settings.",
                VmCreate,
                self.vm_create,
                SETS,
            ),
            "vm_start": _Tool(
                "Start VM", "Boot a VM; by default returns once its agent is ready.", VmStartArgs, self.vm_start, SETS
            ),
            "vm_stop": _Tool("Stop VM", "Power a VM off (graceful, then forced).", VmArgs, self.vm_stop, REMOVES),
            "vm_rm": _Tool(
                "Remove VM",
                "Remove a VM and its disk; a running VM only with force (it is stopped first).",
                VmRemoveArgs,
                self.vm_rm,
                REMOVES,
            ),
            "vm_inspect": _Tool("Inspect VM", "A VM's details and state history.", VmArgs, self.vm_inspect, READS),
            "vm_logs": _Tool(
                "VM console log", "The last lines of a VM's console log.", VmLogsArgs, self.vm_logs, READS
            ),
            "vm_exec": _Tool(
                "Run command in VM",
                "Run a command in a ready VM and wait for it; output streams as progress when asked. The result "
                "has exit_code and the start and end of stdout and stderr (the middle of long output is omitted; "
                "stdout_bytes and stderr_bytes are the full sizes).",
                VmExecArgs,
                self.vm_exec,
                DESTROYS,
            ),
        }


def _result(
    tool: str, structured: dict[str, Any], is_error: bool = False, text: str | None = None
) -> types.CallToolResult:
    body = text if text is not None else json.dumps(structured, indent=2)
    content: list[dict[str, Any]] = [{"type": "text", "text": body}]
    result = {"content": content, "structuredContent": structured, "isError": is_error}
    return types.CallToolResult.model_validate(fit(tool, result))


def manage_server(
    vms: VmService,
    guest: GuestService,
    network: NetworkService,
    extra_tools: Tools | None = None,
    audit: AuditService | None = None,
) -> Server[Any]:
    """``extra_tools``: more tools served beside the VM ones (the workspace tools, ``nexus.mcp.workspace``); each
    call is recorded in ``audit`` when given (``nexus.mcp.audit``)."""
    tools = {**_Tools(vms, guest, network).table(), **(extra_tools or {})}
    listing = types.ListToolsResult(tools=[t.to_mcp(name) for name, t in tools.items()])

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return listing

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = tools.get(params.name)
        if tool is None:
            raise to_mcp_error(Invalid(f"unknown tool {params.name!r}; tools/list names the tools"))
        try:
            structured = await tool.call(ctx, dict(params.arguments or {}))
            text = command_text(structured) if params.name == "vm_exec" else None
            return _result(params.name, structured, text=text)
        except NexusError as exc:
            error = {"code": exc.code, "message": exc.message}
            return _result(params.name, {"error": error}, is_error=True, text=f"{params.name}: {exc.message}")

    return Server(
        "nexus",
        version=__version__,
        instructions="Manage Nexus microVMs: create, start, stop, remove, inspect them and run commands in them.",
        on_list_tools=list_tools,
        on_call_tool=audited(call_tool, audit, vm_argument),
    )
