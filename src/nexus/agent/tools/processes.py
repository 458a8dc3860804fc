"""The process_* tools: start a command that outlives the call, then list, read, signal and wait for it.

The work is ``nexus.agent.processes.ProcessTable``'s; these check arguments, render results for a model and give
failures a ``code`` in their structured content that nexusd maps (``not_found`` → 404 naming the process,
``conflict`` → 409, ``not_ready`` → the readiness check failed: the process was killed, its last output is in the
result). Output is one stream (stdout and stderr as written), read by byte offset or as the last lines.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
from typing import Any, Final

from nexus.agent.processes import (
    DEFAULT_LOG_BYTES,
    MAX_LOG_BYTES,
    MIN_LOG_BYTES,
    NAME_RE,
    ProcessConflict,
    ProcessInfo,
    ProcessTable,
    StartFailed,
    UnknownProcess,
)
from nexus.agent.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolHandler,
    ToolResult,
    arg_int,
    arg_number,
    arg_str,
    check_keys,
)
from nexus.agent.tools.commands import command_argv, command_env
from nexus.protocol import FILE_CHUNK_BYTES

__all__ = ["DEFAULT_OUTPUT_LIMIT", "SIGNALS", "process_tools"]

DEFAULT_READY_TIMEOUT_S: Final = 30.0
MAX_READY_TIMEOUT_S: Final = 600.0
DEFAULT_WAIT_S: Final = 30.0
MAX_WAIT_S: Final = 3600.0
DEFAULT_OUTPUT_LIMIT: Final = 64 * 1024
MAX_OUTPUT_LIMIT: Final = FILE_CHUNK_BYTES
DEFAULT_TAIL_LINES: Final = 100
FAILURE_TAIL_LINES: Final = 20
SIGNALS: Final = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT")
_PROCESS_ARG: Final = {"type": "string", "description": "The process's id (p1, p2...) or name."}


def _failure(message: str, code: str, **extra: Any) -> ToolResult:
    return ToolResult(structured={"error": message, "code": code, **extra}, text=message, is_error=True)


def _guarded(name: str, handler: ToolHandler) -> ToolHandler:
    """``handler`` with the table's refusals as results nexusd can tell apart (by ``code``)."""

    def call(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        try:
            return handler(args, ctx)
        except UnknownProcess as exc:
            return _failure(f"{name}: {exc}", "not_found", process=args.get("process"))
        except ProcessConflict as exc:
            return _failure(f"{name}: {exc}", "conflict")

    return call


def _line(info: ProcessInfo) -> str:
    command = info.command if isinstance(info.command, str) else " ".join(info.command)
    label = f"{info.id} ({info.name})" if info.name else info.id
    pid = f", pid {info.pid}" if info.running else ""
    why = f" - {info.reason}" if info.reason else ""
    return f"{label}: {info.describe()}{pid}, {info.output_bytes} bytes of output: {command}{why}"


def _process(args: dict[str, Any]) -> str:
    ref: str = arg_str(args, "process")
    return ref


class _Tools:
    def __init__(self, table: ProcessTable) -> None:
        self.table = table

    def start(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        check_keys(
            args, ("command", "name", "cwd", "env", "ready_port", "ready_log", "ready_timeout_s", "max_log_bytes")
        )
        if args.get("command") is None:
            raise ToolError("missing required argument 'command'")
        argv = command_argv(args["command"])
        name: str | None = arg_str(args, "name", None)
        if name is not None and (not NAME_RE.fullmatch(name) or re.fullmatch(r"p[0-9]+", name)):
            raise ToolError(f"name {name!r} must be a letter then up to 62 letters, digits, '_', '.', '-', not p<N>")
        cwd: str = arg_str(args, "cwd", "/")
        if not os.path.isdir(cwd):
            raise ToolError(f"cwd {cwd!r} does not exist or is not a directory")
        port: int | None = arg_int(args, "ready_port", None, minimum=1)
        if port is not None and port > 65535:
            raise ToolError(f"argument 'ready_port' must be <= 65535, got {port}")
        ready_log: str | None = arg_str(args, "ready_log", None)
        if port is not None and ready_log is not None:
            raise ToolError("give ready_port or ready_log, not both")
        try:
            pattern = re.compile(ready_log) if ready_log else None
        except re.error as exc:
            raise ToolError(f"ready_log is not a regular expression: {exc}") from exc
        ready_timeout = arg_number(args, "ready_timeout_s", DEFAULT_READY_TIMEOUT_S, 0.0, MAX_READY_TIMEOUT_S)
        log_bytes: int = arg_int(args, "max_log_bytes", DEFAULT_LOG_BYTES, minimum=MIN_LOG_BYTES)
        if log_bytes > MAX_LOG_BYTES:
            raise ToolError(f"argument 'max_log_bytes' must be <= {MAX_LOG_BYTES}, got {log_bytes}")
        env = command_env(args.get("env")) or dict(os.environ)
        try:
            info = self.table.start(argv, command=args["command"], cwd=cwd, env=env, name=name, log_bytes=log_bytes)
        except StartFailed as exc:
            raise ToolError(str(exc)) from exc
        began = time.monotonic()
        if port is None and pattern is None:
            return ToolResult.ok(info.to_structured(), f"started {_line(info)}")
        failed = self.table.await_ready(info, port, pattern, ready_timeout, ctx.cancelled)
        if failed is not None:
            return self._not_ready(info, failed)
        info = self.table.get(info.id)
        took = round(time.monotonic() - began, 3)
        check = f"port {port} accepts" if port is not None else "its output matched"
        return ToolResult.ok(
            {**info.to_structured(), "ready_after_s": took}, f"started {_line(info)}\nready after {took:g} s: {check}"
        )

    def _not_ready(self, info: ProcessInfo, why: str) -> ToolResult:
        """The process is killed (its group), waited for and kept as a record saying why; the answer is an error with
        its last output lines."""
        reason = f"not ready: {why}"
        ended = self.table.stop_unready(info, reason)
        tail = self.table.output(info.id, None, DEFAULT_OUTPUT_LIMIT, FAILURE_TAIL_LINES).data.decode(
            "utf-8", "replace"
        )
        message = f"process_start: {info.id} was {reason}; it was stopped ({ended.describe()})"
        text = f"{message}\n--- last output ---\n{tail.rstrip()}" if tail else f"{message}; it wrote nothing"
        return ToolResult(
            structured={"error": message, "code": "not_ready", "process": ended.to_structured(), "output": tail},
            text=text,
            is_error=True,
        )

    def list(self, args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ())
        infos = self.table.list()
        text = "\n".join(_line(i) for i in infos) if infos else "no processes (process_start starts one)"
        return ToolResult.ok({"processes": [i.to_structured() for i in infos]}, text)

    def output(self, args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ("process", "offset", "limit", "tail"))
        ref = _process(args)
        offset: int | None = arg_int(args, "offset", None, minimum=0)
        tail: int | None = arg_int(args, "tail", None, minimum=0)
        if offset is not None and tail is not None:
            raise ToolError("give offset or tail, not both")
        limit: int = arg_int(args, "limit", DEFAULT_OUTPUT_LIMIT, minimum=1)
        if limit > MAX_OUTPUT_LIMIT:
            raise ToolError(f"argument 'limit' must be <= {MAX_OUTPUT_LIMIT}, got {limit}")
        if offset is None and tail is None:
            tail = DEFAULT_TAIL_LINES
        out = self.table.output(ref, offset, limit, tail)
        info, text = out.info, out.data.decode("utf-8", "replace")
        structured = {
            "process": info.id,
            "text": text,
            "offset": out.offset,
            "next_offset": out.next_offset,
            "total_bytes": out.total,
            "dropped_bytes": out.first,
            "running": info.running,
            "state": info.state,
            "exit_code": info.exit_code,
            "signal": info.signal,
        }
        notes = [f"[{info.id} {info.describe()}; bytes {out.offset}-{out.next_offset} of {out.total}"]
        if out.first:
            notes.append(f"; the first {out.first} bytes were rotated away")
        if out.next_offset < out.total:
            notes.append(f"; more from offset {out.next_offset}")
        newline = "" if not text or text.endswith("\n") else "\n"
        return ToolResult.ok(structured, f"{text}{newline}{''.join(notes)}]")

    def signal(self, args: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        check_keys(args, ("process", "signal"))
        ref = _process(args)
        name = str(arg_str(args, "signal", "TERM")).upper().removeprefix("SIG")
        if name not in SIGNALS:
            raise ToolError(f"argument 'signal' must be one of {', '.join(SIGNALS)}; got {args['signal']!r}")
        info = self.table.signal(ref, signal.Signals[f"SIG{name}"])
        return ToolResult.ok(
            {**info.to_structured(), "sent": f"SIG{name}"}, f"sent SIG{name} to {info.id}'s process group"
        )

    def wait(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        check_keys(args, ("process", "timeout_s"))
        ref = _process(args)
        timeout = arg_number(args, "timeout_s", DEFAULT_WAIT_S, -math.inf, MAX_WAIT_S)
        if timeout < 0:
            raise ToolError(f"argument 'timeout_s' must be >= 0, got {timeout:g}")
        info = self.table.wait(ref, timeout, ctx.cancelled)
        if ctx.cancelled.is_set():
            return ToolResult.error("process_wait was cancelled; the process is left as it was")
        timed_out = info.running
        text = f"{info.id} still running after {timeout:g} s" if timed_out else _line(info)
        return ToolResult.ok({**info.to_structured(), "timed_out": timed_out}, text)


def process_tools(table: ProcessTable) -> tuple[Tool, ...]:
    tools = _Tools(table)
    return (
        Tool(
            name="process_start",
            title="Start background process",
            description=(
                "Start a command that keeps running after this call (a dev server, a long build, a watcher) and "
                "return at once, or once it is ready: ready_port (a TCP connection to 127.0.0.1:PORT is accepted) "
                "or ready_log (a regular expression matching a line of its output), within ready_timeout_s "
                f"(default {DEFAULT_READY_TIMEOUT_S:g}). A process that does not become ready is killed with its "
                "process group and the error shows its last output. stdout and stderr go, together, to files in "
                f"the VM (the newest max_log_bytes, default {DEFAULT_LOG_BYTES // 2**20} MiB, are kept): read them "
                "with process_output. Processes outlive the MCP session and agent restarts; see process_list, "
                "process_signal, process_wait. Ids are p1, p2...; a name (unique among running ones) works too."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "command": {
                        "oneOf": [
                            {"type": "string", "description": "Shell command, run by /bin/sh -c."},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "argv."},
                        ]
                    },
                    "name": {"type": "string", "pattern": f"^{NAME_RE.pattern}$", "description": "A name for it."},
                    "cwd": {"type": "string", "description": "Working directory (default: /)."},
                    "env": {
                        "type": "object",
                        "additionalProperties": {"type": ["string", "null"]},
                        "description": "Variables merged over the agent's environment (null unsets).",
                    },
                    "ready_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "ready_log": {"type": "string", "description": "Regular expression searched in each line."},
                    "ready_timeout_s": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "maximum": MAX_READY_TIMEOUT_S,
                        "default": DEFAULT_READY_TIMEOUT_S,
                    },
                    "max_log_bytes": {
                        "type": "integer",
                        "minimum": MIN_LOG_BYTES,
                        "maximum": MAX_LOG_BYTES,
                        "default": DEFAULT_LOG_BYTES,
                        "description": "Output kept (the newest bytes); older output is rotated away.",
                    },
                },
                "required": ["command"],
                "additionalProperties": False,
            },
            handler=_guarded("process_start", tools.start),
            destructive=True,
        ),
        Tool(
            name="process_list",
            title="List background processes",
            description="The processes process_start started (running and finished), with state and exit status.",
            input_schema={"type": "object", "properties": {}, "additionalProperties": False},
            handler=tools.list,
            read_only=True,
            idempotent=True,
        ),
        Tool(
            name="process_output",
            title="Read process output",
            description=(
                f"A process's output (stdout and stderr as written): by default its last {DEFAULT_TAIL_LINES} "
                "lines; tail=N for the last N lines; offset=B for bytes from byte B (page with next_offset; "
                f"follow a running process that way). At most limit bytes (default {DEFAULT_OUTPUT_LIMIT}, at "
                f"most {MAX_OUTPUT_LIMIT}). Says total_bytes, dropped_bytes (rotated away), running and the exit "
                "status."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "process": _PROCESS_ARG,
                    "offset": {"type": "integer", "minimum": 0},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_OUTPUT_LIMIT},
                    "tail": {"type": "integer", "minimum": 0, "description": "The last N lines."},
                },
                "required": ["process"],
                "additionalProperties": False,
            },
            handler=_guarded("process_output", tools.output),
            read_only=True,
        ),
        Tool(
            name="process_signal",
            title="Signal process",
            description=(
                "Send a signal (default TERM; KILL, INT, HUP, QUIT, USR1, USR2, STOP, CONT) to a running process "
                "and its process group. process_wait then gives its exit status."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "process": _PROCESS_ARG,
                    "signal": {"type": "string", "enum": list(SIGNALS), "default": "TERM"},
                },
                "required": ["process"],
                "additionalProperties": False,
            },
            handler=_guarded("process_signal", tools.signal),
            destructive=True,
        ),
        Tool(
            name="process_wait",
            title="Wait for process",
            description=(
                f"Wait until a process ends, at most timeout_s (default {DEFAULT_WAIT_S:g}, 0 just looks); its exit "
                "status (exit_code, negative = killed by that signal), or timed_out: true while it still runs."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "process": _PROCESS_ARG,
                    "timeout_s": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": DEFAULT_WAIT_S},
                },
                "required": ["process"],
                "additionalProperties": False,
            },
            handler=_guarded("process_wait", tools.wait),
            read_only=True,
        ),
    )
