"""Host side of one guest stream: newline-delimited JSON-RPC 2.0 over an asyncio byte stream.

Requests are multiplexed by id, so many calls may be in flight at once; notifications from the agent go to a
callback, except progress notifications, which go to the call that asked for them. When the stream ends,
every call still waiting fails at once with ``ChannelClosed`` instead of hanging. Opening the stream is the
transport's job (``nexus.channel.transport``); this module only speaks on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from nexus.domain import NotificationHandler, ProgressHandler
from nexus.protocol import (
    CANCELLED_NOTIFICATION,
    PROGRESS_NOTIFICATION,
    FrameTooLarge,
    JsonRpcError,
    LineBuffer,
    Request,
    Response,
    decode_message,
    encode_message,
    notification,
    parse_message,
    request,
)

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 256 * 1024


class ChannelError(Exception):
    """The guest link failed (closed, timed out, or the peer broke the protocol)."""


class ChannelClosed(ChannelError):
    pass


class ChannelTimeout(ChannelError):
    pass


class RemoteError(ChannelError):
    """The agent answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (JSON-RPC error {code})")
        self.code = code
        self.message = message
        self.data = data


class RpcPeer:
    """One JSON-RPC conversation over ``reader``/``writer``; owns both and closes them."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        name: str,
        on_notification: NotificationHandler | None = None,
    ) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._on_notification = on_notification
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[Any]] = {}
        self._progress: dict[str, ProgressHandler] = {}
        self._write_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._close_reason = "closed"
        self._task = asyncio.create_task(self._read_loop(), name=f"rpc-read-{name}")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_reason(self) -> str:
        return self._close_reason

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = 30.0,
        on_progress: ProgressHandler | None = None,
    ) -> Any:
        """Send a request and wait for its result; raises RemoteError, ChannelClosed or ChannelTimeout."""
        if self.closed:
            raise ChannelClosed(f"{self.name}: {self._close_reason}")
        request_id = next(self._ids)
        if on_progress is not None:
            token = f"p{request_id}"
            params = dict(params or {})
            params["_meta"] = {**params.get("_meta", {}), "progressToken": token}
            self._progress[token] = on_progress
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send(request(request_id, method, params))
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            self._cancel_remote(request_id, "timed out")
            raise ChannelTimeout(f"{self.name}: no answer to {method} within {timeout_s}s") from exc
        except asyncio.CancelledError:
            self._cancel_remote(request_id, "the caller went away")
            raise
        finally:
            self._pending.pop(request_id, None)
            if on_progress is not None:
                self._progress.pop(f"p{request_id}", None)

    def _cancel_remote(self, request_id: int, reason: str) -> None:
        """Tell the agent to stop working on a call nobody waits for any more (MCP notifications/cancelled)."""
        if not self.closed:
            message = notification(CANCELLED_NOTIFICATION, {"requestId": request_id, "reason": reason})
            task = asyncio.get_running_loop().create_task(self._send(message))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self._send(notification(method, params))

    async def close(self, reason: str = "closed") -> None:
        self._shut(reason)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    async def _send(self, message: dict[str, Any]) -> None:
        data = encode_message(message)
        async with self._write_lock:
            if self.closed:
                raise ChannelClosed(f"{self.name}: {self._close_reason}")
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (OSError, ConnectionError) as exc:
                self._shut(f"write failed: {exc}")
                raise ChannelClosed(f"{self.name}: {self._close_reason}") from exc

    async def _read_loop(self) -> None:
        buffer = LineBuffer()
        reason = "the guest closed the connection"
        try:
            while True:
                data = await self._reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                buffer.feed(data)
                while True:
                    try:
                        line = buffer.next_line()
                    except FrameTooLarge as exc:
                        log.warning("%s: %s", self.name, exc)
                        continue
                    if line is None:
                        break
                    self._dispatch(line)
        except (OSError, ConnectionError) as exc:
            reason = f"read failed: {exc}"
        finally:
            self._shut(reason)
            self._writer.close()  # the socket goes now, not when the peer object is collected

    def _dispatch(self, line: bytes) -> None:
        try:
            message = parse_message(decode_message(line))
        except JsonRpcError as exc:
            log.warning("%s: ignoring bad message from guest: %s", self.name, exc.message)
            return
        if isinstance(message, Response):
            future = self._pending.get(message.id) if message.id is not None else None
            if future is None or future.done():
                return
            if message.error is not None:
                future.set_exception(RemoteError(message.error.code, message.error.message, message.error.data))
            else:
                future.set_result(message.result)
        elif isinstance(message, Request) and message.is_notification:
            self._notification(message)
        # The host serves no requests from the guest; there are none in the protocol.

    def _notification(self, message: Request) -> None:
        params = message.params if isinstance(message.params, dict) else {}
        if message.method == PROGRESS_NOTIFICATION:
            handler = self._progress.get(str(params.get("progressToken")))
            if handler is not None:
                handler(params)
                return
        if self._on_notification is not None:
            self._on_notification(message.method, message.params)

    def _shut(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self._close_reason = reason
        self._closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed(f"{self.name}: {reason}"))
