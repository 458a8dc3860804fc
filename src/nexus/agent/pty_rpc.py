"""The ``nexus/pty_*`` requests on the MCP stream (``nexus.protocol.pty``): a terminal's exact bytes for nexusd.

Every request is answered on the reader thread without waiting, except ``nexus/pty_read``, whose answer the
session's own thread sends when output comes (``PtySession.read_async``): a long-poll holds no thread of the
agent's tool pool, however many terminals are open. A session opened here belongs to its connection
(``connection_closed`` closes it). Standard library only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from nexus.agent.pty_sessions import PtyError, PtySession, PtySessions, ReadResult
from nexus.agent.session import Connection
from nexus.protocol import INVALID_PARAMS, JsonRpcError, Request, RequestId, result_response
from nexus.protocol.pty import (
    DEFAULT_COLS,
    DEFAULT_ROWS,
    MAX_COLS,
    MAX_ROWS,
    PTY_CLOSE,
    PTY_OPEN,
    PTY_READ,
    PTY_READ_BYTES,
    PTY_RESIZE,
    PTY_WRITE,
    PTY_WRITE_BYTES,
)

__all__ = ["PTY_METHODS", "PtyMethods"]

PTY_METHODS: Final = frozenset({PTY_OPEN, PTY_READ, PTY_WRITE, PTY_RESIZE, PTY_CLOSE})
MAX_WAIT_S: Final = 60.0


def _invalid(message: str) -> JsonRpcError:
    return JsonRpcError(INVALID_PARAMS, message)


def _int(params: dict[str, Any], key: str, default: int | None, low: int, high: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"{key} must be an integer from {low} to {high}, got {value!r}")
    return value


def _data(params: dict[str, Any]) -> bytes:
    value = params.get("data")
    if not isinstance(value, str):
        raise _invalid("data must be a base64 string")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"data is not base64: {exc}") from exc
    if len(data) > PTY_WRITE_BYTES:
        raise _invalid(f"one write carries at most {PTY_WRITE_BYTES} bytes")
    return data


def _read_result(result: ReadResult) -> dict[str, Any]:
    return {
        "data": base64.b64encode(result.data).decode("ascii"),
        "offset": result.offset,
        "lost": result.lost,
        "exited": result.exited,
        "exit_code": result.exit_code,
    }


class PtyMethods:
    def __init__(self, sessions: PtySessions) -> None:
        self._sessions = sessions

    def on_request(self, conn: Connection, req: Request) -> None:
        params = req.params if isinstance(req.params, dict) else None
        if params is None:
            raise _invalid(f"{req.method} params must be an object")
        if req.method == PTY_OPEN:
            self._reply(conn, req.id, self._open(conn, params))
            return
        session = self._session(params)
        if req.method == PTY_READ:
            offset = _int(params, "offset", None, 0, 2**62)
            max_bytes = _int(params, "max_bytes", PTY_READ_BYTES, 1, PTY_READ_BYTES)
            wait_s = params.get("wait_s", 0)
            if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or not 0 <= wait_s <= MAX_WAIT_S:
                raise _invalid(f"wait_s must be a number from 0 to {MAX_WAIT_S:g}")
            request_id = req.id

            def answer(result: ReadResult) -> None:
                self._reply(conn, request_id, _read_result(result))

            session.read_async(offset, max_bytes, float(wait_s), answer, conn.id)
            return
        try:
            if req.method == PTY_WRITE:
                session.write(_data(params), strict=False)
            elif req.method == PTY_RESIZE:
                session.resize(_int(params, "rows", None, 1, MAX_ROWS), _int(params, "cols", None, 1, MAX_COLS))
            else:
                session.close()
        except PtyError as exc:
            raise _invalid(str(exc)) from exc
        self._reply(conn, req.id, {})

    def connection_closed(self, conn: Connection) -> None:
        self._sessions.connection_closed(conn.id)

    def _open(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        command = params.get("command")
        if command is not None and not (
            isinstance(command, list) and command and all(isinstance(a, str) and a for a in command)
        ):
            raise _invalid("command must be null (the login shell) or a non-empty array of non-empty strings")
        cwd = params.get("cwd")
        env = params.get("env")
        if cwd is not None and not isinstance(cwd, str):
            raise _invalid("cwd must be a string")
        if env is not None and not (
            isinstance(env, dict)
            and all(isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items())
        ):
            raise _invalid("env must be an object of string values")
        rows = _int(params, "rows", DEFAULT_ROWS, 1, MAX_ROWS)
        cols = _int(params, "cols", DEFAULT_COLS, 1, MAX_COLS)
        try:
            session = self._sessions.open(command, rows=rows, cols=cols, cwd=cwd, env=env, owner=conn.id)
        except PtyError as exc:
            raise _invalid(str(exc)) from exc
        return {"id": session.id, "pid": session.pid}

    def _session(self, params: dict[str, Any]) -> PtySession:
        session_id = params.get("id")
        if not isinstance(session_id, str):
            raise _invalid("id must be a session id (a string)")
        try:
            return self._sessions.get(session_id)
        except PtyError as exc:
            raise _invalid(str(exc)) from exc

    @staticmethod
    def _reply(conn: Connection, request_id: RequestId | None, result: dict[str, Any]) -> None:
        conn.send(result_response(request_id, result))
