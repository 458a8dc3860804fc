"""Forwarding progress from a call that reports it in a sync callback to the MCP client, in order.

Reporting is a no-op unless the client's request carried a ``progressToken`` (the SDK checks). This module does
not decide what progress means; callers pass ``(progress, total, message)`` triples.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from mcp.server.context import ServerRequestContext

T = TypeVar("T")
Report = Callable[[float, float | None, str | None], None]


def wants_progress(ctx: ServerRequestContext[Any, Any]) -> bool:
    meta: Any = ctx.meta or {}
    return meta.get("progress_token") is not None or meta.get("progressToken") is not None


async def with_progress(ctx: ServerRequestContext[Any, Any], call: Callable[[Report], Awaitable[T]]) -> T:
    """Await ``call(report)``; each ``report(...)`` it makes reaches the client as a progress notification.
    Whatever ``call`` raises is raised here, unwrapped."""
    send, receive = anyio.create_memory_object_stream[tuple[float, float | None, str | None]](math.inf)
    outcome: list[T] = []
    failure: list[Exception] = []

    def report(progress: float, total: float | None, message: str | None) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):  # a late report, after the call returned
            send.send_nowait((progress, total, message))

    async def forward() -> None:
        async with receive:
            async for progress, total, message in receive:
                await ctx.session.report_progress(progress, total, message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(forward)
        with send:
            try:
                outcome.append(await call(report))
            except Exception as exc:
                failure.append(exc)
    if failure:
        raise failure[0]
    return outcome[0]
