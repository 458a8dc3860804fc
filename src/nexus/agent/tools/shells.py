"""The shell_* tools: a model drives an interactive program (a shell, a REPL, a debugger, an editor) on a terminal.

``shell_open`` starts it on a PTY (``nexus.agent.pty_sessions``) and returns the session id and its first output;
``shell_write`` sends text as is and/or named keys (``nexus.agent.keys``); ``shell_read`` returns either the new
output since the last read (``mode="new"``: escape sequences and control characters removed, line ends as ``\\n``;
the middle of more than ``max_bytes`` replaced by an omitted marker) or what the screen shows (``mode="screen"``:
``nexus.agent.screen``, for full-screen programs), waiting up to ``wait_s`` for output to come and pause;
``shell_close`` ends it. Both read modes move the same cursor. A session no tool touches for ``idle_timeout_s``
is closed. A wait holds one of the agent's tool threads, so it is bounded (``MAX_WAIT_S``).
"""

from __future__ import annotations

from typing import Any, Final

from nexus.agent.keys import KEY_NAMES, key_bytes
from nexus.agent.pty_sessions import (
    DEFAULT_IDLE_TIMEOUT_S,
    KILL_GRACE_S,
    RING_BYTES,
    PtyError,
    PtySession,
    PtySessions,
    ReadResult,
)
from nexus.agent.screen import strip_controls
from nexus.agent.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    arg_choice,
    arg_int,
    arg_number,
    arg_str,
    check_keys,
)
from nexus.agent.tools.commands import command_argv
from nexus.protocol.pty import DEFAULT_COLS, DEFAULT_ROWS, MAX_COLS, MAX_ROWS

__all__ = ["shell_tools"]

MAX_WAIT_S: Final = 60.0
MAX_IDLE_TIMEOUT_S: Final = 24 * 3600.0
DEFAULT_READ_BYTES: Final = 16 * 1024
MAX_READ_BYTES: Final = 256 * 1024
SETTLE_S: Final = 0.2  # a read that saw output waits this long for more before answering (whole lines)
OPEN_WAIT_S: Final = 1.0

_SESSION: Final = {"type": "string", "description": "The session id shell_open returned."}


def _session(sessions: PtySessions, args: dict[str, Any]) -> PtySession:
    try:
        return sessions.get(arg_str(args, "session"))
    except PtyError as exc:
        raise ToolError(str(exc)) from exc


def _argv(value: Any) -> list[str] | None:
    """None: the login shell."""
    return None if value is None else command_argv(value)


def _env(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in value.items()
    ):
        raise ToolError("argument 'env' must be an object of string values with names without '='")
    return dict(value)


def _size(args: dict[str, Any]) -> tuple[int, int]:
    rows: int = arg_int(args, "rows", DEFAULT_ROWS, minimum=2)
    cols: int = arg_int(args, "cols", DEFAULT_COLS, minimum=10)
    if rows > MAX_ROWS or cols > MAX_COLS:
        raise ToolError(f"rows must be <= {MAX_ROWS} and cols <= {MAX_COLS}")
    return rows, cols


def _new_output(result: ReadResult, max_bytes: int) -> tuple[str, int]:
    """The output as a model reads it, and how many bytes it leaves out (dropped before, or cut from the middle)."""
    data, omitted = result.data, result.lost
    if len(data) > max_bytes:
        head, tail = data[: max_bytes // 4], data[-(max_bytes - max_bytes // 4) :]
        cut = len(data) - len(head) - len(tail)
        text = f"{_text(head)}\n[… {cut} bytes omitted …]\n{_text(tail)}"
        omitted += cut
    else:
        text = _text(data)
    if result.lost:
        text = f"[… {result.lost} earlier bytes were dropped: read more often …]\n{text}"
    return text, omitted


def _wait_s(args: dict[str, Any], default: float) -> float:
    value = args.get("wait_s")
    if value is None or (value == 0 and not isinstance(value, bool)):
        return default if value is None else 0.0
    return arg_number(args, "wait_s", default, 0.0, MAX_WAIT_S)


def _text(data: bytes) -> str:
    return strip_controls(data.decode("utf-8", errors="replace"))


def _ending(result: ReadResult) -> str:
    if not result.exited:
        return ""
    return f"\n[the program exited with code {result.exit_code}; shell_close ends the session]"


def shell_tools(sessions: PtySessions) -> tuple[Tool, ...]:
    def shell_open(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ("command", "rows", "cols", "cwd", "env", "idle_timeout_s", "wait_s"))
        rows, cols = _size(args)
        wait_s = _wait_s(args, OPEN_WAIT_S)
        idle_s = arg_number(args, "idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S, 0.0, MAX_IDLE_TIMEOUT_S)
        try:
            session = sessions.open(
                _argv(args.get("command")),
                rows=rows,
                cols=cols,
                cwd=arg_str(args, "cwd", None),
                env=_env(args.get("env")),
                idle_timeout_s=idle_s,
                screen=True,
            )
        except PtyError as exc:
            raise ToolError(str(exc)) from exc
        result = session.wait_read(None, RING_BYTES, wait_s, SETTLE_S if wait_s > 0 else 0.0)
        output, _ = _new_output(result, DEFAULT_READ_BYTES)
        structured = {
            "session": session.id,
            "pid": session.pid,
            "command": session.argv,
            "rows": rows,
            "cols": cols,
            "output": output,
            "exited": result.exited,
            "exit_code": result.exit_code,
        }
        text = f"session {session.id} opened: {' '.join(session.argv)} (pid {session.pid}, {rows}x{cols})\n{output}"
        return ToolResult.ok(structured, text + _ending(result))

    def shell_write(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ("session", "text", "keys"))
        session = _session(sessions, args)
        text: str | None = arg_str(args, "text", None)
        keys = args.get("keys")
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ToolError("argument 'keys' must be an array of key names")
        if text is None and not keys:
            raise ToolError("give 'text' (sent as is), 'keys' (named keys, after the text) or both")
        data = (text or "").encode("utf-8")
        for key in keys or []:
            data += key_bytes(key, session.app_cursor_keys)
        try:
            session.write(data)
        except PtyError as exc:
            raise ToolError(str(exc)) from exc
        return ToolResult.ok({"session": session.id, "bytes": len(data)}, f"sent {len(data)} bytes to {session.id}")

    def shell_read(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ("session", "mode", "wait_s", "max_bytes"))
        session = _session(sessions, args)
        mode = arg_choice(args, "mode", ("new", "screen"), "new")
        wait_s = _wait_s(args, 0.0)
        max_bytes: int = arg_int(args, "max_bytes", DEFAULT_READ_BYTES, minimum=256)
        if max_bytes > MAX_READ_BYTES:
            raise ToolError(f"argument 'max_bytes' must be <= {MAX_READ_BYTES}, got {max_bytes}")
        result = session.wait_read(None, RING_BYTES, wait_s, SETTLE_S if wait_s > 0 else 0.0)
        base = {"session": session.id, "exited": result.exited, "exit_code": result.exit_code}
        if mode == "screen":
            view = session.screen_view()
            if view is None:  # opened by nexusd's terminal bridge, which keeps no screen
                raise ToolError(f"session {session.id} has no screen model; read it with mode 'new'")
            structured = {
                **base,
                "screen": view.text,
                "cursor": {"row": view.row, "col": view.col},
                "rows": view.rows,
                "cols": view.cols,
                "alternate_screen": view.alternate,
            }
            footer = f"[screen {view.rows}x{view.cols}, cursor at row {view.row}, col {view.col}]"
            return ToolResult.ok(structured, f"{view.text}\n{footer}{_ending(result)}")
        output, omitted = _new_output(result, max_bytes)
        structured = {**base, "output": output, "bytes": len(result.data), "omitted_bytes": omitted}
        return ToolResult.ok(structured, (output or "(no new output)") + _ending(result))

    def shell_close(args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ("session",))
        session = _session(sessions, args)
        session.close()
        session.join(KILL_GRACE_S + 1.0)
        structured = {"session": session.id, "exit_code": session.exit_code}
        return ToolResult.ok(structured, f"session {session.id} closed (exit code {session.exit_code})")

    return (
        Tool(
            name="shell_open",
            title="Open an interactive shell",
            description=(
                "Start an interactive program on a terminal inside the VM and keep it running: a shell (default: "
                "the login shell), a REPL (python3 -i), a debugger, an editor. Returns the session id for "
                "shell_write/shell_read/shell_close and the first output. Use run_command for one-shot commands. "
                f"A session no tool uses for idle_timeout_s (default {DEFAULT_IDLE_TIMEOUT_S:g} s) is closed."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "command": {
                        "oneOf": [
                            {"type": "string", "description": "Shell command, run by /bin/sh -c."},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "argv."},
                        ],
                        "description": "The program (default: the user's login shell).",
                    },
                    "rows": {"type": "integer", "minimum": 2, "maximum": MAX_ROWS, "default": DEFAULT_ROWS},
                    "cols": {"type": "integer", "minimum": 10, "maximum": MAX_COLS, "default": DEFAULT_COLS},
                    "cwd": {"type": "string", "description": "Working directory (default: the user's home)."},
                    "env": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Variables added to the environment (TERM is xterm-256color).",
                    },
                    "idle_timeout_s": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": MAX_IDLE_TIMEOUT_S,
                        "default": DEFAULT_IDLE_TIMEOUT_S,
                        "description": "Seconds without a shell_* call on it before the session is closed.",
                    },
                    "wait_s": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_WAIT_S,
                        "default": OPEN_WAIT_S,
                        "description": "Wait up to this long for the first output (a prompt) to come and pause.",
                    },
                },
                "additionalProperties": False,
            },
            handler=shell_open,
            destructive=True,
        ),
        Tool(
            name="shell_write",
            title="Type into a shell",
            description=(
                "Send input to a shell_open session: 'text' exactly as given (include \\r or the Enter key to "
                f"submit a line), then 'keys' by name: {KEY_NAMES}. Example: text '6*7', keys ['Enter']; "
                "keys ['C-c'] interrupts. Read the effect with shell_read."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "session": _SESSION,
                    "text": {"type": "string", "description": "Typed as is."},
                    "keys": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Key names, sent after text.",
                    },
                },
                "required": ["session"],
                "additionalProperties": False,
            },
            handler=shell_write,
            destructive=True,
        ),
        Tool(
            name="shell_read",
            title="Read a shell",
            description=(
                "Read a shell_open session. mode 'new' (default): the output since the last read, escape "
                "sequences removed; more than max_bytes keeps its first quarter and last three quarters around a "
                "'[… N bytes omitted …]' line. mode 'screen': the terminal's screen as a person would see it "
                "with the cursor's 0-based row and col (for full-screen programs: editors, top, less). wait_s: wait "
                "up to that long for output to come "
                f"and pause (at most {MAX_WAIT_S:g} s; default 0, no wait). exited and exit_code tell whether the "
                "program ended."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "session": _SESSION,
                    "mode": {"type": "string", "enum": ["new", "screen"], "default": "new"},
                    "wait_s": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
                    "max_bytes": {
                        "type": "integer",
                        "minimum": 256,
                        "maximum": MAX_READ_BYTES,
                        "default": DEFAULT_READ_BYTES,
                    },
                },
                "required": ["session"],
                "additionalProperties": False,
            },
            handler=shell_read,
        ),
        Tool(
            name="shell_close",
            title="Close a shell",
            description="End a shell_open session: hang up its terminal (SIGHUP, then SIGKILL) and forget it.",
            input_schema={
                "type": "object",
                "properties": {"session": _SESSION},
                "required": ["session"],
                "additionalProperties": False,
            },
            handler=shell_close,
            destructive=True,
        ),
    )
