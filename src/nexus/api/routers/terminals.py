"""``/v1/vms/{ref}/shell``: a WebSocket carrying a terminal in the VM (``services.terminals``), for a browser terminal
and ``nexusctl vm shell``.

Query: ``command`` (repeated: the argv; none: the guest user's login shell), ``rows``, ``cols``, ``cwd``, ``env``
(repeated ``NAME=VALUE``). Frames: binary =
terminal bytes, both ways; text = JSON control: from the client ``{"type": "resize", "rows": R, "cols": C}``; from
the server, last, ``{"type": "exit", "code": N}`` (the shell's way: 128+N for a program killed by signal N, which
``"signal"`` then names) before a normal close, or ``{"type": "error", "message": ...}`` before a close with 1011
(the VM went away) or 1003 (a control frame that is not one). A request refused before the handshake (bad query,
unknown VM, VM not ready, no token over TCP) gets the API's usual HTTP error answer instead of a WebSocket.
Whatever ends the socket (the program, the client vanishing, nexusd stopping) closes the guest's session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.datastructures import QueryParams
from starlette.websockets import WebSocketDisconnect

from nexus.api.deps import Services
from nexus.api.errors import error_response, status_for
from nexus.domain import Forbidden, Invalid, NexusError
from nexus.services.terminals import Terminal, TerminalOutput, TerminalSpec

router = APIRouter(tags=["terminals"])

DEFAULT_ROWS, DEFAULT_COLS = 24, 80
CLOSE_NORMAL, CLOSE_UNSUPPORTED, CLOSE_POLICY, CLOSE_ERROR = 1000, 1003, 1008, 1011


def _number(query: QueryParams, name: str, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise Invalid(f"{name} must be a whole number, got {value!r}")
    return int(value)


def options(query: QueryParams) -> TerminalSpec:
    """The terminal the query asks for; Invalid for anything else in it."""
    unknown = sorted(set(query.keys()) - {"command", "rows", "cols", "cwd", "env"})
    if unknown:
        raise Invalid(f"unknown query parameter(s): {', '.join(unknown)}; expected command, rows, cols, cwd, env")
    env = {}
    for item in query.getlist("env"):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise Invalid(f"env wants NAME=VALUE, got {item!r}")
        env[name] = value
    return TerminalSpec(
        command=query.getlist("command") or None,
        rows=_number(query, "rows", DEFAULT_ROWS),
        cols=_number(query, "cols", DEFAULT_COLS),
        cwd=query.get("cwd"),
        env=env or None,
    )


def exit_frame(output: TerminalOutput) -> dict[str, Any]:
    code = output.exit_code or 0
    if code < 0:
        return {"type": "exit", "code": 128 - code, "signal": -code}
    return {"type": "exit", "code": code}


async def refuse(websocket: WebSocket, exc: NexusError) -> None:
    """The error answer for a handshake that will not be accepted: the API's HTTP error (when the server can send
    one: ASGI's denial-response extension), else a policy-violation close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(status_for(exc), exc.code, exc.message))
    else:
        await websocket.close(CLOSE_POLICY, exc.message[:120])


def check_browser(websocket: WebSocket) -> None:
    """Forbidden for a browser page nexusd does not serve (a WebSocket has no CORS: a page that rebinds its name to
    a forwarder in front of the Unix socket would open a shell), by the MCP endpoints' Host/Origin rule."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return  # not a browser
    check = websocket.app.state.browser_check
    refusal = check(websocket.headers.get("host"), origin) if check is not None else "no browser page is allowed"
    if refusal is not None:
        raise Forbidden(f"a terminal cannot be opened from this page: {refusal}")


@router.websocket("/v1/vms/{ref}/shell")
async def shell(websocket: WebSocket, ref: str) -> None:
    services: Services = websocket.app.state.services
    try:
        check_browser(websocket)
        terminal = await services.guest.open_terminal(ref, options(websocket.query_params))
    except NexusError as exc:
        await refuse(websocket, exc)
        return
    try:
        await websocket.accept()
        await bridge(websocket, terminal)
    finally:
        await terminal.close()


async def bridge(websocket: WebSocket, terminal: Terminal) -> None:
    """Carry bytes both ways until the program exits or the client goes; then close the socket (if still open)."""
    closing: tuple[int, dict[str, Any] | None] = (CLOSE_NORMAL, None)

    async def output() -> None:
        nonlocal closing
        while True:
            out = await terminal.read()
            if out.data:
                await websocket.send_bytes(out.data)
            if out.exited:
                closing = (CLOSE_NORMAL, exit_frame(out))
                return

    async def client_input() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", CLOSE_NORMAL))
            if message.get("bytes") is not None:
                await terminal.write(message["bytes"])
            elif message.get("text") is not None:
                await terminal.resize(*_resize(message["text"]))

    tasks = [asyncio.create_task(output()), asyncio.create_task(client_input())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    except WebSocketDisconnect:
        return  # the client is gone: nothing to close
    except NexusError as exc:  # Invalid: the client's control frame; else the VM or its agent went away
        closing = (
            CLOSE_UNSUPPORTED if isinstance(exc, Invalid) else CLOSE_ERROR,
            {"type": "error", "message": exc.message},
        )
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    code, frame = closing
    with contextlib.suppress(Exception):  # the client may have gone meanwhile
        if frame is not None:
            await websocket.send_text(json.dumps(frame))
        await websocket.close(code)


def _resize(text: str) -> tuple[int, int]:
    """A resize control frame's ``(rows, cols)``; Invalid for anything else."""
    try:
        frame = json.loads(text)
    except ValueError:
        frame = None
    if isinstance(frame, dict) and frame.get("type") == "resize":
        rows, cols = frame.get("rows"), frame.get("cols")
        if (
            isinstance(rows, int)
            and isinstance(cols, int)
            and not isinstance(rows, bool)
            and not isinstance(cols, bool)
        ):
            return rows, cols
    raise Invalid(f'not a control frame (expected {{"type": "resize", "rows": R, "cols": C}}): {text[:80]!r}')
