"""A terminal in a ready VM: one PTY session of its agent (``nexus/pty_*`` on the VM's MCP link) as a byte stream
with resize and an exit code, for the WebSocket endpoint. The session is the guest's; ``Terminal.close`` (which its
user must call on every path) ends it, and the agent ends it too when the link drops or nothing reads it for its
idle timeout. Failures are the link's domain errors (``Unavailable`` when the VM goes away)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexus.domain import GuestError, GuestLink, Invalid, Unavailable
from nexus.protocol import (
    MAX_COLS,
    MAX_ROWS,
    PTY_CLOSE,
    PTY_OPEN,
    PTY_READ,
    PTY_RESIZE,
    PTY_WRITE,
    PTY_WRITE_BYTES,
)

READ_WAIT_S = 25.0  # one long-poll; the agent answers as soon as there is output
CALL_GRACE_S = 10.0  # a call waits this long past its own wait for the answer


@dataclass(frozen=True, slots=True)
class TerminalOutput:
    data: bytes
    exit_code: int | None  # set once the program has exited and all it wrote has been read (-N: signal N)

    @property
    def exited(self) -> bool:
        return self.exit_code is not None


@dataclass(frozen=True, slots=True)
class TerminalSpec:
    command: list[str] | None = None  # None: the guest user's login shell
    rows: int = 24
    cols: int = 80
    cwd: str | None = None  # None: the user's home
    env: dict[str, str] | None = None  # added to the agent's environment


def check_size(rows: int, cols: int) -> None:
    if not (1 <= rows <= MAX_ROWS and 1 <= cols <= MAX_COLS):
        raise Invalid(f"a terminal has 1 to {MAX_ROWS} rows and 1 to {MAX_COLS} columns, not {rows}x{cols}")


class Terminal:
    """One open guest PTY session; reads are long-polls, one at a time."""

    def __init__(self, link: GuestLink, session_id: str, pid: int, on_input: Callable[[], None] | None = None) -> None:
        """``on_input`` hears of each write: someone typing counts as using the VM (idle suspend)."""
        self._link = link
        self._on_input = on_input
        self.id = session_id
        self.pid = pid
        self._offset = 0
        self._closed = False

    async def read(self, wait_s: float = READ_WAIT_S) -> TerminalOutput:
        """The next output (waiting up to ``wait_s`` for some; empty data when none came)."""
        result = await self._call(PTY_READ, {"offset": self._offset, "wait_s": wait_s}, wait_s + CALL_GRACE_S)
        try:
            data = base64.b64decode(result["data"])
            self._offset = int(result["offset"])
            exit_code = result["exit_code"] if result.get("exited") else None
        except (KeyError, TypeError, ValueError) as exc:
            raise GuestError(f"{PTY_READ}: the agent sent a malformed answer") from exc
        return TerminalOutput(data, int(exit_code) if exit_code is not None else None)

    async def write(self, data: bytes) -> None:
        if self._on_input is not None:
            self._on_input()
        for start in range(0, len(data), PTY_WRITE_BYTES):
            chunk = data[start : start + PTY_WRITE_BYTES]
            await self._call(PTY_WRITE, {"data": base64.b64encode(chunk).decode("ascii")})

    async def resize(self, rows: int, cols: int) -> None:
        check_size(rows, cols)
        await self._call(PTY_RESIZE, {"rows": rows, "cols": cols})

    async def close(self) -> None:
        """End the guest session (idempotent; a link already gone took the session with it)."""
        if self._closed:
            return
        self._closed = True
        # gone already: the VM stopped, or the session ended and the agent forgot it
        if not self._link.closed:
            with contextlib.suppress(Unavailable, GuestError, Invalid):
                await asyncio.shield(self._call(PTY_CLOSE, {}))

    async def _call(self, method: str, params: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        result = await self._link.call(method, {"id": self.id, **params}, timeout_s)
        if not isinstance(result, dict):
            raise GuestError(f"{method}: the agent sent a malformed answer")
        return result


async def open_terminal(link: GuestLink, spec: TerminalSpec, on_input: Callable[[], None] | None = None) -> Terminal:
    """Start ``spec``'s program on a new PTY in the guest."""
    check_size(spec.rows, spec.cols)
    if spec.command is not None and (not spec.command or not all(spec.command)):
        raise Invalid("a terminal's command is a non-empty list of non-empty words (or none: the login shell)")
    params: dict[str, Any] = {"command": spec.command, "rows": spec.rows, "cols": spec.cols}
    if spec.cwd is not None:
        params["cwd"] = spec.cwd
    if spec.env:
        params["env"] = spec.env
    result = await link.call(PTY_OPEN, params)
    if not isinstance(result, dict) or not isinstance(result.get("id"), str):
        raise GuestError(f"{PTY_OPEN}: the agent sent a malformed answer")
    return Terminal(link, result["id"], int(result.get("pid") or 0), on_input)
