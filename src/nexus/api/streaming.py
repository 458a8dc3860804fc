"""Long operations over HTTP as NDJSON: one JSON event per line while the work runs, then the result.

Events: ``{"event": "progress", "stage", "fraction"}``, ``{"event": "output", "stream", "data"}``, and last
``{"event": "result", "result": ...}`` or ``{"event": "error", "error": {"code", "message"}}``. A failure
before the first event is an ordinary error response with its HTTP status; after it, the error event is
the only way left to say so: every failure, an unexpected one (an ``OSError`` mid-build) too, ends the stream with
an error event (``internal``, with the request id of its log line, see ``api.errors``) rather than cutting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from nexus.api.errors import unexpected
from nexus.domain import NexusError

Emit = Callable[[dict[str, Any]], None]
NDJSON = "application/x-ndjson"


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), default=str).encode() + b"\n"


async def ndjson(request: Request, work: Callable[[Emit], Coroutine[Any, Any, Any]]) -> StreamingResponse:
    """Run ``work(emit)`` for ``request``; ``emit`` may be called from any thread."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(event: dict[str, Any]) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    task = asyncio.create_task(work(emit))
    first = asyncio.create_task(queue.get())
    await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
    pending: list[dict[str, Any]] = []
    if first.done():
        pending.append(first.result())
    else:
        first.cancel()
        task.result()  # a NexusError here, before any event, becomes a plain error response

    async def body() -> AsyncIterator[bytes]:
        try:
            for event in pending:
                yield _line(event)
            while not task.done() or not queue.empty():
                getter = asyncio.create_task(queue.get())
                await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield _line(getter.result())
                else:
                    getter.cancel()
            await asyncio.sleep(0)  # let call_soon_threadsafe deliveries land
            while not queue.empty():
                yield _line(queue.get_nowait())
            try:
                final = task.result()
            except NexusError as exc:
                yield _line({"event": "error", "error": {"code": exc.code, "message": exc.message}})
            except Exception as exc:  # past the first event no status is left: the error event is the only word
                yield _line({"event": "error", "error": unexpected(exc, request.method, request.url.path)})
            else:
                yield _line({"event": "result", "result": final})
        finally:
            if not task.done():  # the client went away: stop the work
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    return StreamingResponse(body(), media_type=NDJSON)


def progress_emitter(emit: Emit) -> Callable[[str, float], None]:
    def progress(stage: str, fraction: float) -> None:
        emit({"event": "progress", "stage": stage, "fraction": round(fraction, 4)})

    return progress
