"""The host MCP endpoints' part of the audit log: each ``tools/call`` on ``/mcp`` and ``/v1/vms/{ref}/mcp`` is one
entry (via ``mcp``, the tool's name, the VM, the arguments' digest and size, the result's JSON size, isError).

``audited`` wraps a server's one ``tools/call`` handler, so every tool of it is recorded alike. Who called is what
``api.middleware.Access`` put in the HTTP request's scope. A call that is refused before it runs (unknown tool, a
VM that cannot serve) is a JSON-RPC error and recorded as an error with no result.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from starlette.requests import Request

from nexus.domain import utcnow
from nexus.domain.audit import ANONYMOUS_CALLER, AuditEntry, Decision, Via, digest
from nexus.services.audit import AuditService

Ctx = ServerRequestContext[Any, Any]
CallTool = Callable[[Ctx, types.CallToolRequestParams], Awaitable[types.CallToolResult]]
# The VM a call is about, as given: the endpoint's {ref}, or a management tool's "vm" argument.
TargetRef = Callable[[Ctx, dict[str, Any]], str | None]


def _caller(ctx: Ctx) -> str:
    request = ctx.request
    caller = request.scope.get("state", {}).get("caller") if isinstance(request, Request) else None
    return caller if isinstance(caller, str) else ANONYMOUS_CALLER


def path_ref(ctx: Ctx, _arguments: dict[str, Any]) -> str | None:
    """The ``{ref}`` of ``/v1/vms/{ref}/mcp``."""
    request = ctx.request
    ref = request.path_params.get("ref") if isinstance(request, Request) else None
    return ref if isinstance(ref, str) else None


def vm_argument(_ctx: Ctx, arguments: dict[str, Any]) -> str | None:
    """A management tool's ``vm`` argument (the VM tools and snapshot tools name it so)."""
    vm = arguments.get("vm")
    return vm if isinstance(vm, str) else None


def audited(call_tool: CallTool, audit: AuditService | None, target_ref: TargetRef) -> CallTool:
    """``call_tool``, recording each call in ``audit`` (unchanged without one)."""
    if audit is None:
        return call_tool

    async def call(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        at, started = utcnow(), time.monotonic()
        arguments = dict(params.arguments or {})
        ref = target_ref(ctx, arguments)
        target_id, target = audit.target(ref) if ref is not None else (None, None)
        result: types.CallToolResult | None = None
        try:
            result = await call_tool(ctx, params)
            return result
        finally:
            args_digest, args_bytes = digest(arguments)
            audit.record(
                AuditEntry(
                    at=at,
                    caller=_caller(ctx),
                    via=Via.MCP,
                    action=params.name,
                    decision=Decision.ALLOW,
                    target_id=target_id,
                    target=target,
                    args_digest=args_digest,
                    args_bytes=args_bytes,
                    duration_ms=(time.monotonic() - started) * 1000,
                    result_bytes=len(result.model_dump_json(by_alias=True, exclude_none=True)) if result else 0,
                    is_error=result is None or result.is_error,
                )
            )

    return call
