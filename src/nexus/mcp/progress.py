"""Forwarding progress from a call that reports it in a sync callback to the MCP client, in order.

Reporting is a no-op unless the client's request carried a ``progressToken`` (the SDK checks). This module does
not decide what progress means; callers pass ``(progress, total, message)`` triples.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from mcp.server.context import ServerRequestContext

T = TypeVar("T")
Report = Callable[[float, float | None, str | None], None]


def wants_progress(ctx: ServerRequestContext[Any, Any]) -> bool:
    meta: Any = ctx.meta or {}
    return meta.get("progress_token") is not None or meta.get("progressToken") is not None


HEARTBEAT_S = 5.0  # a silent call still says it is alive this often, so clients that reset timeouts on progress wait


async def with_progress(
    ctx: ServerRequestContext[Any, Any], call: Callable[[Report], Awaitable[T]], heartbeat_s: float = HEARTBEAT_S
) -> T:
    """Await ``call(report)``; each ``report(...)`` it makes reaches the client as a progress notification, and
    every ``heartbeat_s`` without one a "still running" notification is sent. Progress values reach the client
    strictly increasing (the spec's rule), whatever the call reports. Whatever ``call`` raises is raised here,
    unwrapped."""
    send, receive = anyio.create_memory_object_stream[tuple[float, float | None, str | None]](math.inf)
    outcome: list[T] = []
    failure: list[Exception] = []
    started = time.monotonic()

    def report(progress: float, total: float | None, message: str | None) -> None:
        with contextlib.suppress(anyio.ClosedResourceError):  # a late report, after the call returned
            send.send_nowait((progress, total, message))

    async def forward() -> None:
        last = 0.0
        async with receive:
            while True:
                with anyio.move_on_after(heartbeat_s) as quiet:
                    try:
                        progress, total, message = await receive.receive()
                    except anyio.EndOfStream:
                        return
                if quiet.cancelled_caught:
                    progress, total, message = last + 1, None, f"still running ({time.monotonic() - started:.0f} s)"
                last = progress if progress > last else last + 1
                await ctx.session.report_progress(last, total, message)

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
