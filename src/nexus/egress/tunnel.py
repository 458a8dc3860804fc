"""A plain byte tunnel between a VM and a host: each direction relayed in bounded pieces, ended half by half."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from nexus.egress.http import PIECE, Conn


async def _pump(src: Conn, dst: Conn, touch: Callable[[], None]) -> int:
    sent = 0
    try:
        while data := await src.reader.read(PIECE):
            dst.writer.write(data)
            await dst.writer.drain()
            sent += len(data)
            touch()
        if dst.writer.can_write_eof():
            dst.writer.write_eof()  # the other direction may still have an answer to carry
        else:
            dst.writer.close()
    except OSError:
        # one side broke: the other direction has nothing left to do either
        src.writer.close()
        dst.writer.close()
    return sent


async def tunnel(client: Conn, upstream: Conn, touch: Callable[[], None]) -> int:
    """Relay until both directions have ended; the bytes sent to the client. Idleness is the caller's watch:
    closing either writer ends the tunnel."""
    async with asyncio.TaskGroup() as group:
        group.create_task(_pump(client, upstream, touch))
        down = group.create_task(_pump(upstream, client, touch))
    return down.result()
