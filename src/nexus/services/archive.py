"""Directory trees in and out of a VM as tar streams: the host side of the agent's archive sessions
(``nexus.protocol.archive``). nexusd only relays the stream - it never unpacks a guest's tar itself - and holds
at most a chunk or two of it: one call of a session is in flight at a time (the next one overlaps with passing
the previous chunk on), so a slow reader or writer at either end slows the other instead of filling memory.

A session that ends early (the HTTP client went away, the guest refused a member) is closed on the agent in the
background; the agent also ends sessions nobody calls for (``ARCHIVE_IDLE_S``) and those of a dropped link.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from nexus.domain import GuestError, GuestLink, Invalid, NexusError
from nexus.protocol import (
    ARCHIVE_CHUNK_BYTES,
    ARCHIVE_CLOSE_METHOD,
    ARCHIVE_FINISH_METHOD,
    ARCHIVE_PACK_METHOD,
    ARCHIVE_READ_METHOD,
    ARCHIVE_UNPACK_METHOD,
    ARCHIVE_WRITE_METHOD,
)

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 120.0  # one chunk; the agent waits at most ARCHIVE_IDLE_S for its other end
_closing: set[asyncio.Task[None]] = set()  # background closes, kept until done (the loop holds tasks weakly)


def _guest_path(path: str) -> str:
    if not path.startswith("/") or "\0" in path:
        raise Invalid(f"path must be an absolute guest path, got {path!r}")
    return path


async def _call(link: GuestLink, method: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        result = await link.call(method, params, CALL_TIMEOUT_S)
    except NexusError as exc:
        # The agent's message names the member or path; the method name in front of it tells a user nothing.
        raise type(exc)(exc.message.removeprefix(f"{method}: ")) from exc
    if not isinstance(result, dict):
        raise GuestError(f"{method}: the agent sent a malformed result")
    return result


def _drop(task: asyncio.Task[Any] | None) -> None:
    """Stop a call nobody waits for any more; an outcome it already has is taken, so it is not reported unread."""
    if task is None:
        return
    if task.done():
        _ = task.cancelled() or task.exception()
    else:
        task.cancel()


def _close_soon(link: GuestLink, session: str) -> None:
    async def close() -> None:
        with contextlib.suppress(NexusError):
            await link.call(ARCHIVE_CLOSE_METHOD, {"session": session}, CALL_TIMEOUT_S)

    task = asyncio.get_running_loop().create_task(close(), name=f"archive-close-{session}")
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def download(link: GuestLink, path: str) -> AsyncIterator[bytes]:
    """The tar stream of the guest's ``path`` (its top-level entry named after it). The session is opened here,
    so a missing path fails now, before anything is sent; the iterator closes it if it is not read to the end."""
    opened = await _call(link, ARCHIVE_PACK_METHOD, {"path": _guest_path(path)})
    return _read(link, str(opened.get("session")))


async def _read(link: GuestLink, session: str) -> AsyncIterator[bytes]:
    async def read() -> tuple[bytes, bool]:
        out = await _call(link, ARCHIVE_READ_METHOD, {"session": session})
        return base64.b64decode(out.get("data", "")), bool(out.get("eof"))

    pending: asyncio.Task[tuple[bytes, bool]] | None = asyncio.ensure_future(read())
    eof = False
    try:
        while pending is not None:
            data, eof = await pending
            pending = None if eof else asyncio.ensure_future(read())  # the next chunk comes while this one goes
            if data:
                yield data
    finally:
        _drop(pending)
        if not eof:
            _close_soon(link, session)


async def _pieces(body: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """``body`` regrouped into chunks of ``ARCHIVE_CHUNK_BYTES`` (the last one shorter)."""
    buffer = bytearray()
    async for part in body:
        buffer += part
        while len(buffer) >= ARCHIVE_CHUNK_BYTES:
            yield bytes(buffer[:ARCHIVE_CHUNK_BYTES])
            del buffer[:ARCHIVE_CHUNK_BYTES]
    if buffer:
        yield bytes(buffer)


async def upload(link: GuestLink, path: str, body: AsyncIterable[bytes], cp: bool) -> dict[str, Any]:
    """Unpack the tar stream ``body`` into the guest directory ``path`` (``cp``: ``cp -r`` placement, see
    ``nexus.protocol.cp_destination``); the agent's counts. A member the agent refuses is ``Invalid``."""
    opened = await _call(link, ARCHIVE_UNPACK_METHOD, {"path": _guest_path(path), "cp": cp})
    session = str(opened.get("session"))
    pending: asyncio.Task[dict[str, Any]] | None = None
    finished = False
    try:
        offset = 0
        async for piece in _pieces(body):
            if pending is not None:
                await pending  # a refusal surfaces here, and the rest of the body is never read
            params = {"session": session, "offset": offset, "data": base64.b64encode(piece).decode("ascii")}
            pending = asyncio.ensure_future(_call(link, ARCHIVE_WRITE_METHOD, params))
            offset += len(piece)
        if pending is not None:
            await pending
        result = await _call(link, ARCHIVE_FINISH_METHOD, {"session": session})
        finished = True
        log.info("archive: unpacked %d bytes into %s", offset, path)
        return result
    finally:
        _drop(pending)
        if not finished:
            _close_soon(link, session)
