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
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from nexus import __version__
from nexus.domain import Invalid, NetInfo, NexusError, PublishedPort, Role, Vm, VmFilter, VmSpec, VmState
from nexus.mcp.errors import to_mcp_error
from nexus.mcp.progress import Report, with_progress
from nexus.mcp.sizing import fit
from nexus.protocol import command_text
from nexus.schemas import VmOut
from nexus.services import NetworkService, VmService
from nexus.services.guest import GuestService, OutputChunk

Ctx = ServerRequestContext[Any, Any]
Args = dict[str, Any]

_VM = {"vm": {"type": "string", "description": "VM name or id"}}


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def vm_dict(vm: Vm, net: NetInfo | None) -> dict[str, Any]:
    """A VM as REST shows it (``nexus.schemas.VmOut``): one model for every edge."""
    return VmOut.of(vm, net).model_dump(mode="json")


def _get(args: Args, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
    """One argument, type-checked (bool is not an int here); Invalid when missing or of the wrong type."""
    if key not in args or args[key] is None:
        if required:
            raise Invalid(f"missing argument {key!r}")
        return default
    value = args[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise Invalid(f"argument {key!r} must be {names}")
    return value


def _check_known(args: Args, schema: dict[str, Any]) -> None:
    unknown = sorted(set(args) - set(schema["properties"]))
    if unknown:
        raise Invalid(f"unknown argument(s): {', '.join(unknown)}")


Handler = Callable[[Ctx, Args], Awaitable[dict[str, Any]]]


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
class _Tool:
    title: str
    description: str
    schema: dict[str, Any]
    handler: Handler
    hints: Hints

    def to_mcp(self, name: str) -> types.Tool:
        return types.Tool(
            name=name,
            title=self.title,
            description=self.description,
            input_schema=self.schema,
            annotations=self.hints.annotations(self.title),
        )


class _Tools:
    def __init__(self, vms: VmService, guest: GuestService, network: NetworkService) -> None:
        self.vms = vms
        self.guest = guest
        self.network = network

    def vm(self, vm: Vm) -> dict[str, Any]:
        return vm_dict(vm, self.network.info(vm.id))

    async def vm_list(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        state = _get(args, "state", str)
        role = _get(args, "role", str)
        try:
            flt = VmFilter(
                role=Role(role) if role else None,
                state=VmState(state) if state else None,
                tags=tuple(_get(args, "tags", list, [])),
            )
        except ValueError as exc:
            raise Invalid(str(exc)) from exc
        return {"vms": [self.vm(vm) for vm in self.vms.find(flt)]}

    async def vm_create(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        tags = _get(args, "tags", list, [])
        publish = _get(args, "publish", list, [])
        if not all(isinstance(t, str) for t in (*tags, *publish)):
            raise Invalid("arguments 'tags' and 'publish' must be lists of strings")
        spec = VmSpec(
            name=_get(args, "name", str, required=True),
            vcpus=_get(args, "vcpus", int),
            mem_mib=_get(args, "mem_mib", int),
            image=_get(args, "image", str),
            kernel=_get(args, "kernel", str),
            tags=tuple(tags),
            network=_get(args, "network", bool),
            publish=tuple(PublishedPort.parse(p) for p in publish),
        )
        return self.vm(self.vms.create(spec))

    async def vm_start(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        vm = _get(args, "vm", str, required=True)
        return self.vm(await self.vms.start(vm, wait=_get(args, "wait", bool, True)))

    async def vm_stop(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        return self.vm(await self.vms.stop(_get(args, "vm", str, required=True)))

    async def vm_rm(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        vm = self.vms.get(_get(args, "vm", str, required=True))
        await self.vms.remove(vm.id, force=_get(args, "force", bool, False))
        return {"removed": vm.name, "id": vm.id}

    async def vm_inspect(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        vm = self.vms.get(_get(args, "vm", str, required=True))
        history = [
            {
                "from": str(h.from_state) if h.from_state else None,
                "to": str(h.to_state),
                "reason": h.reason,
                "at": h.at.isoformat(),
            }
            for h in self.vms.history(vm.id)
        ]
        return {**self.vm(vm), "history": history}

    async def vm_logs(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        vm = _get(args, "vm", str, required=True)
        tail = _get(args, "tail", int, 100)
        if tail < 1:
            raise Invalid("argument 'tail' must be at least 1")
        return {"lines": self.vms.logs(vm, tail)}

    async def vm_exec(self, ctx: Ctx, args: Args) -> dict[str, Any]:
        vm = _get(args, "vm", str, required=True)
        command = _get(args, "command", (str, list), required=True)
        if isinstance(command, list) and not (command and all(isinstance(a, str) for a in command)):
            raise Invalid("argument 'command' must be a string or a non-empty list of strings")
        env = _get(args, "env", dict)
        if env is not None and not all(isinstance(v, str) for v in env.values()):
            raise Invalid("argument 'env' must map names to strings")
        timeout_s = float(_get(args, "timeout_s", (int, float), 600.0))
        streamed = 0

        def call(report: Report) -> Awaitable[dict[str, Any]]:
            def on_output(chunk: OutputChunk) -> None:
                nonlocal streamed
                streamed += len(chunk.data)
                report(float(streamed), None, chunk.data)

            return self.guest.exec(
                vm,
                command,
                on_output,
                cwd=_get(args, "cwd", str),
                env=env,
                stdin=_get(args, "stdin", str),
                timeout_s=timeout_s,
            )

        result = await with_progress(ctx, call)  # stdout/stderr: head and tail of long output, as run_command's
        keys = ("exit_code", "stdout", "stderr", "stdout_bytes", "stderr_bytes", "truncated", "timed_out", "duration_s")
        return {key: result.get(key) for key in keys}

    def table(self) -> dict[str, _Tool]:
        exec_props = {
            **_VM,
            "command": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                "description": "a shell command line, or an argv list run without a shell",
            },
            "cwd": {"type": "string"},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "stdin": {"type": "string"},
            "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        }
        states = [str(s) for s in VmState]
        return {
            "vm_list": _Tool(
                "List VMs",
                "List VMs, optionally only those in a state, of a role, or with all the given tags.",
                _schema(
                    {
                        "state": {"type": "string", "enum": states},
                        "role": {"type": "string", "enum": [str(r) for r in Role]},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    }
                ),
                self.vm_list,
                READS,
            ),
            "vm_create": _Tool(
                "Create VM",
                "Create a VM (not started). Unset sizes, image and kernel come from nexusd's settings.",
                _schema(
                    {
                        "name": {"type": "string"},
                        "vcpus": {"type": "integer", "minimum": 1},
                        "mem_mib": {"type": "integer", "minimum": 1},
                        "image": {"type": "string"},
                        "kernel": {"type": "string"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "network": {"type": "boolean", "description": "give it a NIC (default: nexusd's setting)"},
                        "publish": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "HOSTPORT:GUESTPORT[/tcp|udp]: the host's port forwarded to the VM's",
                        },
                    },
                    ("name",),
                ),
                self.vm_create,
                SETS,
            ),
            "vm_start": _Tool(
                "Start VM",
                "Boot a VM; by default returns once its agent is ready.",
                _schema({**_VM, "wait": {"type": "boolean", "default": True}}, ("vm",)),
                self.vm_start,
                SETS,
            ),
            "vm_stop": _Tool(
                "Stop VM", "Power a VM off (graceful, then forced).", _schema(_VM, ("vm",)), self.vm_stop, REMOVES
            ),
            "vm_rm": _Tool(
                "Remove VM",
                "Remove a VM and its disk; a running VM only with force (it is stopped first).",
                _schema({**_VM, "force": {"type": "boolean", "default": False}}, ("vm",)),
                self.vm_rm,
                REMOVES,
            ),
            "vm_inspect": _Tool(
                "Inspect VM", "A VM's details and state history.", _schema(_VM, ("vm",)), self.vm_inspect, READS
            ),
            "vm_logs": _Tool(
                "VM console log",
                "The last lines of a VM's console log.",
                _schema({**_VM, "tail": {"type": "integer", "minimum": 1, "default": 100}}, ("vm",)),
                self.vm_logs,
                READS,
            ),
            "vm_exec": _Tool(
                "Run command in VM",
                "Run a command in a ready VM and wait for it; output streams as progress when asked. The result "
                "has exit_code and the start and end of stdout and stderr (the middle of long output is omitted; "
                "stdout_bytes and stderr_bytes are the full sizes).",
                _schema(exec_props, ("vm", "command")),
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
    vms: VmService, guest: GuestService, network: NetworkService, extra_tools: dict[str, _Tool] | None = None
) -> Server[Any]:
    """``extra_tools``: more tools served beside the VM ones (the workspace tools, ``nexus.mcp.workspace``)."""
    tools = {**_Tools(vms, guest, network).table(), **(extra_tools or {})}
    listing = types.ListToolsResult(tools=[t.to_mcp(name) for name, t in tools.items()])

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return listing

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = tools.get(params.name)
        if tool is None:
            raise to_mcp_error(Invalid(f"unknown tool {params.name!r}; tools/list names the tools"))
        args = dict(params.arguments or {})
        try:
            _check_known(args, tool.schema)
            structured = await tool.handler(ctx, args)
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
        on_call_tool=call_tool,
    )
