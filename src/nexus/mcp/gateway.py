"""A portal's gateway: the MCP server that agents inside a portal VM reach through its gateway link.

Each session the portal's agent tunnels (``nexus.protocol.gateway``) is served by its own SDK ``Server`` over
memory streams, as the stdio transport would serve it. The caller is the portal whose link the bytes came in on;
nothing the guest says can change that.

What a portal sees: ``vms_list``; each guest tool that some rule allows it on some VM, with a required ``vm``
argument whose enum names those VMs (one tool per kind, not per VM: tool names stay valid for every model API —
Anthropic's and OpenAI's function names allow no ``.`` — and the list stays short however many VMs there are);
and, when a rule gives it management rights, ``vm_create`` and ``vm_start``/``vm_stop``/``vm_snapshot``/
``vm_rollback``/``vm_remove`` for the VMs it creates. Every call is decided by ``PolicyService`` (default deny),
held within the rule's limits, and recorded in the audit log with its arguments' digest (never their content).
Refusals and VMs that cannot serve are tool errors (``isError``) a model can read, never hangs: a VM that dies
mid-call fails the call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.message import SessionMessage
from pydantic import BaseModel, ValidationError

from nexus import __version__
from nexus.domain import Forbidden, GuestLink, NexusError, NotFound, Vm, VmSpec, utcnow
from nexus.domain.audit import AuditEntry, AuditLog, Decision, Via, digest
from nexus.domain.policy import ALL_TOOLS, CreateAsk, Rule, Verdict
from nexus.mcp.guest import explained
from nexus.mcp.manage import ADDS, DESTROYS, READS, REMOVES, SETS, Hints
from nexus.mcp.progress import Report, wants_progress, with_progress
from nexus.mcp.sizing import fit, message_bytes
from nexus.protocol import AGENT_INSTRUCTIONS, GATEWAY_CLOSE, GATEWAY_MESSAGE
from nexus.schemas import (
    PortalCreateArgs,
    SnapshotCreateArgs,
    SnapshotOut,
    SnapshotRollbackArgs,
    VmArgs,
    VmOut,
    parse,
)
from nexus.services import NetworkService, SnapshotService, VmService
from nexus.services.guest import GuestService
from nexus.services.policy import PolicyService

log = logging.getLogger(__name__)

Ctx = ServerRequestContext[Any, Any]
A = TypeVar("A", bound=BaseModel)
SESSION_BUFFER = 64  # messages in flight per session before the link's reader waits
MAX_SESSIONS = 32  # open sessions per portal (each is an SDK server and its tasks)
SEND_TIMEOUT_S = 30.0  # a portal that does not read what it asked for this long loses its link
LIST_TIMEOUT_S = 5.0  # a work VM that does not list its tools in time is listed by name only

INSTRUCTIONS = (
    "Nexus gateway: the work VMs this portal may use, each a Linux computer. Every guest tool takes a `vm` argument "
    "naming the VM to run it on; vms_list says which VMs you may use and which tools each allows. " + AGENT_INSTRUCTIONS
)


def _error(tool: str, message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": f"{tool}: {message}"}], "isError": True}


@dataclass(frozen=True, slots=True)
class _Own:
    """A tool nexusd itself serves on the gateway."""

    title: str
    description: str
    args: type[BaseModel] | None
    hints: Hints
    manage: bool  # listed only to portals with management rights

    def to_mcp(self, name: str) -> types.Tool:
        schema = self.args.model_json_schema() if self.args is not None else {"type": "object", "properties": {}}
        return types.Tool(
            name=name,
            title=self.title,
            description=self.description,
            input_schema=schema,
            annotations=self.hints.annotations(self.title),
        )


OWN_TOOLS = {
    "vms_list": _Own(
        "List my work VMs",
        "The VMs this portal may use: name, state, the tools allowed on each, and whether this portal created it.",
        None,
        READS,
        manage=False,
    ),
    "vm_create": _Own(
        "Create work VM",
        "Create a work VM of your own (and start it unless start is false), within the sizes and images your "
        "policy allows. Unset sizes and image come from nexusd's settings.",
        PortalCreateArgs,
        ADDS,
        manage=True,
    ),
    "vm_start": _Own("Start work VM", "Boot a VM you created; returns once it is ready.", VmArgs, SETS, manage=True),
    "vm_stop": _Own("Stop work VM", "Power off a VM you created.", VmArgs, REMOVES, manage=True),
    "vm_remove": _Own(
        "Remove work VM", "Remove a VM you created and its disk (stopped first if running).", VmArgs, REMOVES, True
    ),
    "vm_snapshot": _Own(
        "Snapshot work VM",
        "Snapshot all drives of a VM you created (a running VM's filesystems are frozen for the moment).",
        SnapshotCreateArgs,
        ADDS,
        manage=True,
    ),
    "vm_rollback": _Own(
        "Roll back work VM",
        "Put a VM you created back as a snapshot holds it; needs it stopped, or restart=true. Everything written "
        "since the snapshot is lost.",
        SnapshotRollbackArgs,
        DESTROYS,
        manage=True,
    ),
}


class GatewayServer:
    """Implements ``GatewayHost``: serves every session of every portal's gateway link."""

    def __init__(
        self,
        *,
        vms: VmService,
        guest: GuestService,
        policy: PolicyService,
        network: NetworkService,
        snapshots: SnapshotService,
        audit: AuditLog,
    ) -> None:
        self._vms = vms
        self._snapshots = snapshots
        self._guest = guest
        self._policy = policy
        self._network = network
        self._audit = audit

    async def serve(self, portal_id: str, link: GuestLink, inbox: asyncio.Queue[tuple[str, Any]]) -> None:
        sessions: dict[str, _Session] = {}
        closed = asyncio.ensure_future(link.wait_closed())
        try:
            while True:
                message = asyncio.ensure_future(inbox.get())
                await asyncio.wait({message, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not message.done():
                    message.cancel()
                    return
                method, params = message.result()
                session_id = params.get("session") if isinstance(params, dict) else None
                if not isinstance(session_id, str):
                    log.warning("portal %s: gateway message without a session; dropped", portal_id)
                    continue
                for ended in [sid for sid, session in sessions.items() if session.done]:
                    del sessions[ended]
                if method == GATEWAY_CLOSE:
                    session = sessions.pop(session_id, None)
                    if session is not None:
                        await session.end()
                elif method == GATEWAY_MESSAGE:
                    session = sessions.get(session_id)
                    if session is None:
                        if len(sessions) >= MAX_SESSIONS:
                            log.warning(
                                "portal %s: more than %d gateway sessions; refused one", portal_id, MAX_SESSIONS
                            )
                            await link.notify(GATEWAY_CLOSE, {"session": session_id})
                            continue
                        session = sessions[session_id] = self._open(portal_id, session_id, link)
                    await session.deliver(params.get("message"))
        finally:
            closed.cancel()
            for session in sessions.values():
                await session.end()

    def _open(self, portal_id: str, session_id: str, link: GuestLink) -> _Session:
        server = _PortalTools(self, portal_id).server()
        return _Session(session_id, server, link)

    # -- what the sessions' handlers use --------------------------------------------------------------

    def record(self, portal: Vm, action: str, arguments: Any, verdict: Verdict, **outcome: Any) -> None:
        args_digest, args_bytes = digest(arguments)
        target: Vm | None = outcome.pop("target", None)
        self._audit.record(
            AuditEntry(
                at=utcnow(),
                caller=f"vm:{portal.name}",
                via=Via.GATEWAY,
                action=action,
                decision=Decision.ALLOW if verdict.allowed else Decision.DENY,
                target_id=target.id if target is not None else None,
                target=target.name if target is not None else None,
                rule=verdict.rule.id if verdict.rule is not None else None,
                reason=verdict.reason,
                args_digest=args_digest,
                args_bytes=args_bytes,
                **outcome,
            )
        )


class _Session:
    """One MCP session tunnelled from a portal: an SDK server on memory streams, its output sent back on the link."""

    def __init__(self, session_id: str, server: Server[Any], link: GuestLink) -> None:
        self.id = session_id
        self._link = link
        self._to_server: MemoryObjectSendStream[SessionMessage | Exception]
        from_client: MemoryObjectReceiveStream[SessionMessage | Exception]
        self._to_server, from_client = anyio.create_memory_object_stream[SessionMessage | Exception](SESSION_BUFFER)
        to_client, self._from_server = anyio.create_memory_object_stream[SessionMessage](SESSION_BUFFER)
        options = server.create_initialization_options()
        self._task = asyncio.create_task(self._run(server, from_client, to_client, options), name=f"gw-{session_id}")

    @property
    def done(self) -> bool:
        return self._task.done()

    async def _run(
        self,
        server: Server[Any],
        from_client: MemoryObjectReceiveStream[SessionMessage | Exception],
        to_client: MemoryObjectSendStream[SessionMessage],
        options: Any,
    ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump)
            try:
                await server.run(from_client, to_client, options)
            finally:
                tg.cancel_scope.cancel()
        with contextlib.suppress(NexusError):
            await self._link.notify(GATEWAY_CLOSE, {"session": self.id})

    async def _pump(self) -> None:
        async with self._from_server:
            async for item in self._from_server:
                message = item.message.model_dump(by_alias=True, exclude_unset=True, mode="json")
                try:
                    notify = self._link.notify(GATEWAY_MESSAGE, {"session": self.id, "message": message})
                    await asyncio.wait_for(notify, SEND_TIMEOUT_S)
                except TimeoutError:  # the portal stopped reading: it cannot hold nexusd up
                    await self._link.close("the portal stopped reading its gateway")
                    return
                except NexusError:
                    return  # the link closed: serve() ends every session

    async def deliver(self, raw: Any) -> None:
        try:
            item: SessionMessage | Exception = SessionMessage(types.jsonrpc_message_adapter.validate_python(raw))
        except ValidationError as exc:
            item = exc  # the SDK answers it as a parse error, as over stdio
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._to_server.send(item)

    async def end(self) -> None:
        self._to_server.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


class _PortalTools:
    """The handlers of one portal's sessions."""

    def __init__(self, gateway: GatewayServer, portal_id: str) -> None:
        self._gw = gateway
        self._portal_id = portal_id

    def server(self) -> Server[Any]:
        return Server(
            "nexus-gateway",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
        )

    def _portal(self) -> Vm:
        return self._gw._vms.get(self._portal_id)

    # -- tools/list -----------------------------------------------------------------------------------

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        portal = self._portal()
        allowed: dict[str, list[str]] = {}  # guest tool → the VMs it may run on
        schemas: dict[str, dict[str, Any]] = {}
        for vm, rules in self._gw._policy.reachable(portal):
            listed = await self._guest_tools(vm)
            names = set(listed) if any(ALL_TOOLS in r.spec.tools for r in rules) else set()
            names |= {t for r in rules for t in r.spec.tools if t != ALL_TOOLS}
            for name in names:
                allowed.setdefault(name, []).append(vm.name)
                if name in listed:
                    schemas.setdefault(name, listed[name])
        manages = self._gw._policy.manages(portal)
        tools = [tool.to_mcp(name) for name, tool in OWN_TOOLS.items() if manages or not tool.manage]
        for name in sorted(allowed):
            tools.append(_with_vm(schemas.get(name, {"name": name}), sorted(allowed[name])))
        return types.ListToolsResult(tools=tools)

    async def _guest_tools(self, vm: Vm) -> dict[str, dict[str, Any]]:
        try:
            listed = await asyncio.wait_for(self._gw._guest.list_tools(vm.id), LIST_TIMEOUT_S)
        except (NexusError, TimeoutError):
            return {}  # not running, or not answering: its tools are listed by name only
        return {t["name"]: t for t in listed if isinstance(t, dict) and isinstance(t.get("name"), str)}

    # -- tools/call -----------------------------------------------------------------------------------

    async def call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        if params.name in OWN_TOOLS:
            result = await self._own(params.name, arguments)
        else:
            result = await self._routed(ctx, params.name, arguments)
        return types.CallToolResult.model_validate(fit(params.name, result))

    async def _routed(self, ctx: Ctx, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        portal = self._portal()
        started = time.monotonic()
        ref = arguments.pop("vm", None)
        if not isinstance(ref, str) or not ref:
            self._gw.record(portal, tool, arguments, Verdict(False, "no work VM named in the `vm` argument"))
            return _error(tool, "name the work VM to run it on in the `vm` argument (vms_list lists them)")
        try:
            target = self._gw._vms.get(ref)
        except NotFound:
            verdict = Verdict(False, f"portal {portal.name} may use no VM named {ref}")
            self._gw.record(portal, tool, arguments, verdict)
            return _error(tool, f"refused: {verdict.reason}")
        verdict = self._gw._policy.decide(portal, target, tool)
        if not verdict.allowed or verdict.rule is None:
            self._gw.record(portal, tool, arguments, verdict, target=target)
            return _error(tool, f"refused: {verdict.reason}")
        rule = verdict.rule
        try:
            with self._gw._policy.slot(rule, portal):
                result, streamed = await self._forward(ctx, target, tool, arguments, rule.spec.limits.max_result_bytes)
        except Forbidden as exc:
            refused = Verdict(False, exc.message, rule)
            self._gw.record(portal, tool, arguments, refused, target=target)
            return _error(tool, f"refused: {exc.message}")
        except NexusError as exc:
            message = explained(exc, target.id, self._gw._vms.get).message
            self._record_done(portal, tool, arguments, verdict, target, started, {}, error=True)
            return _error(tool, message if f"VM {target.name}" in message else f"VM {target.name}: {message}")
        result = self._within(rule, tool, result)
        self._record_done(portal, tool, arguments, verdict, target, started, result, streamed=streamed)
        return result

    async def _forward(
        self, ctx: Ctx, target: Vm, tool: str, arguments: dict[str, Any], limit: int | None
    ) -> tuple[dict[str, Any], int]:
        """The tool's result, and how many bytes of progress messages (streamed output) reached the portal: they
        count against the rule's ``limit`` too, so output beyond it is no longer streamed."""
        if not wants_progress(ctx):
            return await self._gw._guest.call_tool(target.id, tool, arguments), 0
        streamed = 0

        def call(report: Report) -> Awaitable[dict[str, Any]]:
            def on_progress(note: dict[str, Any]) -> None:
                nonlocal streamed
                message = note.get("message")
                text = message if isinstance(message, str) else None
                if text is not None and limit is not None:
                    if streamed + len(text.encode()) > limit:
                        text = None  # the rest of the output stays in the VM; progress itself still reaches it
                    else:
                        streamed += len(text.encode())
                report(float(note.get("progress", 0)), note.get("total"), text)

            return self._gw._guest.call_tool(target.id, tool, arguments, on_progress=on_progress)

        return await with_progress(ctx, call), streamed

    @staticmethod
    def _within(rule: Rule, tool: str, result: dict[str, Any]) -> dict[str, Any]:
        limit = rule.spec.limits.max_result_bytes
        size = message_bytes(result)
        if limit is None or size <= limit:
            return result
        return _error(
            tool,
            f"the result is {size} bytes, more than the {limit} bytes {rule} allows; ask for less (file_read "
            "length, list_dir limit, run_command max_output_bytes)",
        )

    def _record_done(
        self,
        portal: Vm,
        tool: str,
        arguments: dict[str, Any],
        verdict: Verdict,
        target: Vm | None,
        started: float,
        result: dict[str, Any],
        error: bool = False,
        streamed: int = 0,
    ) -> None:
        self._gw.record(
            portal,
            tool,
            arguments,
            verdict,
            target=target,
            duration_ms=(time.monotonic() - started) * 1000,
            result_bytes=(message_bytes(result) if result else 0) + streamed,
            is_error=error or bool(result.get("isError")),
        )

    # -- nexusd's own tools ---------------------------------------------------------------------------

    async def _own(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        portal = self._portal()
        started = time.monotonic()
        handlers: dict[str, Callable[[Vm, dict[str, Any]], Awaitable[tuple[dict[str, Any], Verdict, Vm | None]]]] = {
            "vms_list": self._vms_list,
            "vm_create": self._create,
            "vm_start": self._managed("start", VmArgs, lambda vm, _: self._gw._vms.start(vm.id, wait=True)),
            "vm_stop": self._managed("stop", VmArgs, lambda vm, _: self._gw._vms.stop(vm.id)),
            "vm_remove": self._managed("remove", VmArgs, self._remove),
            "vm_snapshot": self._managed("snapshot", SnapshotCreateArgs, self._snapshot),
            "vm_rollback": self._managed("roll back", SnapshotRollbackArgs, self._rollback),
        }
        if OWN_TOOLS[tool].manage and not self._gw._policy.manages(portal):
            verdict = Verdict(False, f"no rule lets portal {portal.name} manage VMs (default deny)")
            self._gw.record(portal, tool, arguments, verdict)
            return _error(tool, f"refused: {verdict.reason}")
        try:
            structured, verdict, target = await handlers[tool](portal, arguments)
        except _Refused as refused:
            self._gw.record(portal, tool, arguments, refused.verdict, target=refused.target)
            return _error(tool, f"refused: {refused.verdict.reason}")
        except NexusError as exc:  # let through, and it failed (bad arguments, a name taken, a boot that failed)
            failed = _error(tool, exc.message)
            self._record_done(portal, tool, arguments, Verdict(True, exc.message), None, started, failed, True)
            return failed
        result = {
            "content": [{"type": "text", "text": json.dumps(structured, indent=2)}],
            "structuredContent": structured,
        }
        if tool != "vms_list":
            self._record_done(portal, tool, arguments, verdict, target, started, result)
        return result

    async def _vms_list(self, portal: Vm, arguments: dict[str, Any]) -> tuple[dict[str, Any], Verdict, Vm | None]:
        vms = []
        for vm, rules in self._gw._policy.reachable(portal):
            tools = sorted({t for r in rules for t in r.spec.tools})
            vms.append(
                {"name": vm.name, "state": vm.state.value, "tools": tools, "created_by_me": vm.created_by == portal.id}
            )
        return {"vms": vms, "manage": self._gw._policy.manages(portal)}, Verdict(True, "listing"), None

    def _vm_out(self, vm: Vm) -> dict[str, Any]:
        return VmOut.of(vm, self._gw._network.info(vm.id)).model_dump(mode="json")

    async def _create(self, portal: Vm, arguments: dict[str, Any]) -> tuple[dict[str, Any], Verdict, Vm | None]:
        args = parse(PortalCreateArgs, arguments)
        decided: list[Verdict] = []

        def admit(vm: Vm) -> None:
            verdict = self._gw._policy.decide_create(portal, CreateAsk(vm.image, vm.vcpus, vm.mem_mib))
            decided.append(verdict)
            if not verdict.allowed:
                raise _Refused(verdict, None)

        _, allow = self._gw._vms.egress(portal.id)
        spec = VmSpec(  # it reaches the outside no further than its maker does
            name=args.name,
            vcpus=args.vcpus,
            mem_mib=args.mem_mib,
            image=args.image,
            created_by=portal.id,
            network=portal.network,
            egress=portal.egress,
            allow=allow,
        )
        vm = self._gw._vms.create(spec, admit=admit)
        if args.start:
            vm = await self._gw._vms.start(vm.id, wait=True)
        return self._vm_out(vm), decided[-1], vm

    def _managed(
        self, what: str, model: type[A], action: Callable[[Vm, A], Awaitable[Any]]
    ) -> Callable[[Vm, dict[str, Any]], Awaitable[tuple[dict[str, Any], Verdict, Vm | None]]]:
        """A tool acting on one VM the portal created: ``model``'s arguments name it in ``vm``."""

        async def handler(portal: Vm, arguments: dict[str, Any]) -> tuple[dict[str, Any], Verdict, Vm | None]:
            args = parse(model, arguments)
            ref = str(arguments["vm"])  # every model here requires it
            try:
                target = self._gw._vms.get(ref)
            except NotFound:
                raise _Refused(Verdict(False, f"portal {portal.name} created no VM named {ref}"), None) from None
            verdict = self._gw._policy.decide_manage(portal, target, what)
            if not verdict.allowed:
                raise _Refused(verdict, target)
            done = await action(target, args)
            structured = done if isinstance(done, dict) else self._vm_out(done) if isinstance(done, Vm) else {}
            return structured, verdict, target

        return handler

    async def _remove(self, vm: Vm, _: VmArgs) -> dict[str, Any]:
        await self._gw._vms.remove(vm.id, force=True)
        return {"removed": vm.name, "id": vm.id}

    async def _snapshot(self, vm: Vm, args: SnapshotCreateArgs) -> dict[str, Any]:
        return SnapshotOut.of(await self._gw._snapshots.create(vm.id, args.name)).model_dump(mode="json")

    async def _rollback(self, vm: Vm, args: SnapshotRollbackArgs) -> Vm:
        return await self._gw._snapshots.rollback(vm.id, args.snapshot, restart=args.restart)


class _Refused(Exception):
    def __init__(self, verdict: Verdict, target: Vm | None) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict
        self.target = target


def _with_vm(tool: dict[str, Any], vms: list[str]) -> types.Tool:
    """The guest tool ``tool`` as the gateway lists it: its schema with a required ``vm`` naming one of ``vms``."""
    schema = dict(tool.get("inputSchema") or {"type": "object", "properties": {}})
    properties = {
        "vm": {"type": "string", "enum": vms, "description": "the work VM to run it on"},
        **(schema.get("properties") or {}),
    }
    required = ["vm", *(r for r in schema.get("required") or [] if r != "vm")]
    described = tool.get("description") or f"{tool['name']} on a work VM (listed once one of them is running)"
    listed = {**tool, "inputSchema": {**schema, "properties": properties, "required": required}}
    listed["description"] = f"{described} Runs on the work VM named by `vm`."
    if "inputSchema" not in tool:
        listed["inputSchema"]["additionalProperties"] = True
    return types.Tool.model_validate(listed)
