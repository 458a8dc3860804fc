"""``Shell``: a terminal in a VM (a program on a PTY in the guest) over nexusd's ``/v1/vms/{ref}/shell`` WebSocket,
as bytes in and out, a resize, and the program's exit code at the end (``Nexus.vms.shell``). Synchronous; safe to
``write``/``resize`` from one thread while another ``read``s. Closing it ends the program in the guest."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nexus.client.client import segment
from nexus.client.connection import Connection
from nexus.client.websocket import open_websocket
from nexus.domain import Invalid, Unavailable

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

_CLOSE_UNSUPPORTED = 1003


class Shell:
    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.exit_code: int | None = None
        """The program's exit status once it ended (128+N when a signal N killed it, as a shell says)."""
        self.signal: int | None = None
        self._error: dict[str, Any] | None = None

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, timeout_s: float | None = None) -> bytes:
        """The next bytes the program wrote; ``b""`` once it has ended (``exit_code`` is then set). TimeoutError
        when nothing came within ``timeout_s``; the error nexusd sent when the VM went away."""
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                message = self._ws.recv(timeout_s)
            except ConnectionClosed as exc:
                if self.exit_code is not None:
                    return b""
                raise self._failure(exc.rcvd.code if exc.rcvd is not None else None) from exc
            if isinstance(message, bytes):
                return message
            frame = json.loads(message)
            if frame.get("type") == "exit":
                self.exit_code, self.signal = int(frame["code"]), frame.get("signal")
            elif frame.get("type") == "error":
                self._error = frame

    def write(self, data: bytes) -> None:
        self._ws.send(data)

    def resize(self, rows: int, cols: int) -> None:
        self._ws.send(json.dumps({"type": "resize", "rows": rows, "cols": cols}))

    def close(self) -> None:
        self._ws.close()

    def _failure(self, code: int | None) -> Exception:
        """What ended the terminal before its program did: the error nexusd named, or a lost connection."""
        if self._error is None:
            return Unavailable(f"the terminal's connection to nexusd closed before its program ended (code {code})")
        message = str(self._error.get("message"))
        return Invalid(message) if code == _CLOSE_UNSUPPORTED else Unavailable(message)


def open_shell(
    connection: Connection,
    ref: str,
    command: list[str] | None = None,
    *,
    rows: int = 24,
    cols: int = 80,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Shell:
    query = [("command", word) for word in command or []]
    query += [("rows", str(rows)), ("cols", str(cols))]
    if cwd is not None:
        query.append(("cwd", cwd))
    query += [("env", f"{key}={value}") for key, value in (env or {}).items()]
    return Shell(open_websocket(connection, f"/v1/vms/{segment(ref)}/shell", query))
