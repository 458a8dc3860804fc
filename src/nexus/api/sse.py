"""Server-Sent Events: a never-ending ``text/event-stream`` answer, one event per item of an async generator.

Each event is ``id: <id>`` and ``data: <one line of JSON>``, so a client that reconnects sends the last id it saw as
``Last-Event-ID``. A comment line goes out after every ``keepalive_s`` without an event, so proxies and clients see
a live connection (and nexusd learns of a client gone away at the next write). The stream ends when the generator
does; the generator is closed when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

from fastapi.responses import StreamingResponse

T = TypeVar("T")
EVENT_STREAM = "text/event-stream"
KEEPALIVE_S = 15.0


def event(event_id: int, data: str) -> bytes:
    return f"id: {event_id}\ndata: {data}\n\n".encode()


def event_stream(
    source: AsyncGenerator[T, None], render: Callable[[T], tuple[int, str]], keepalive_s: float = KEEPALIVE_S
) -> StreamingResponse:
    """``source``'s items as SSE events, ``render`` giving each one's id and JSON."""

    async def body() -> AsyncIterator[bytes]:
        pending: asyncio.Future[T] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(source))
                done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
                if not done:
                    yield b": keep-alive\n\n"
                    continue
                item, pending = pending, None
                try:
                    event_id, data = render(item.result())
                except StopAsyncIteration:
                    return
                yield event(event_id, data)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await source.aclose()

    return StreamingResponse(body(), media_type=EVENT_STREAM, headers={"cache-control": "no-cache"})
