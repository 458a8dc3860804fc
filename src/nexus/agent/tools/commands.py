"""The run_command tool: run a process in the guest, capture its output, stream it as it comes.

``command`` is a string (run by ``/bin/sh -c``) or an argv array (exec'd without a shell). The child
gets its own session and process group; on timeout or cancellation the whole group is SIGKILLed.

Output is sized for a model: each stream keeps its first quarter and last three quarters of
``max_output_bytes`` (build and test verdicts are at the end) and reports the bytes in between as
omitted, cut on line boundaries. Everything the command writes is still read (the child never blocks on
a full pipe) and, with a progress token, streamed in full as progress notifications. When the main
process has exited but a background child still holds the pipes, output is collected for
``PIPE_GRACE_S`` more; then a discarding reader takes the pipes over, so the background process lives on
(closing them would kill it with SIGPIPE) and the result says so.

``exit_code`` follows Python's convention: a negative value -N means "killed by signal N" (so a timeout
reports -9 with ``timed_out: true``). A non-zero exit is a normal result, not ``isError``; only a
command that could not be started is an error.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Final

from nexus.agent.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    arg_int,
    arg_number,
    arg_str,
    check_keys,
)
from nexus.protocol import command_text

__all__ = [
    "COMMAND_TOOLS",
    "DEFAULT_OUTPUT_BYTES",
    "DEFAULT_TIMEOUT_S",
    "MAX_OUTPUT_BYTES",
    "CommandOutcome",
    "command_argv",
    "command_env",
    "execute",
]

DEFAULT_OUTPUT_BYTES: Final = 32 * 1024  # per stream: about what a coding agent's own shell tool shows a model
MAX_OUTPUT_BYTES: Final = 256 * 1024
DEFAULT_TIMEOUT_S: Final = 60.0
MAX_TIMEOUT_S: Final = 24 * 3600.0
PIPE_GRACE_S: Final = 0.5
_READ_CHUNK: Final = 64 * 1024
_TICK_S: Final = 0.1


@dataclass(slots=True)
class _Capture:
    """One output stream: its first ``cap // 4`` bytes, its last ``cap - cap // 4`` bytes and how many came in
    all, plus an incremental decoder for streaming."""

    name: str
    cap: int
    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    total: int = 0
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap // 4 - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            keep = self.cap - self.cap // 4
            if len(self.tail) > 2 * keep:  # trim now and then, not on every chunk
                del self.tail[:-keep]

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        """The kept output; past the cap, head and tail cut on line boundaries around an explicit marker."""
        keep = self.cap - self.cap // 4
        tail = bytes(self.tail[-keep:])
        if not self.truncated:
            return (bytes(self.head) + tail).decode("utf-8", errors="replace")
        head = bytes(self.head)
        cut = head.rfind(b"\n")
        head = head[: cut + 1] if cut >= 0 else head
        cut = tail.find(b"\n")
        tail = tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail
        omitted = self.total - len(head) - len(tail)
        newline = "" if head.endswith(b"\n") or not head else "\n"
        marker = f"{newline}[… {omitted} bytes omitted …]\n"
        return head.decode("utf-8", errors="replace") + marker + tail.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    timed_out: bool
    cancelled: bool
    background: bool  # a background process kept the output pipes open past the main process's exit
    duration_s: float

    def to_structured(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_bytes": self.stdout_bytes,
            "stderr_bytes": self.stderr_bytes,
            "truncated": self.truncated,
            "timed_out": self.timed_out,
            "background": self.background,
            "duration_s": round(self.duration_s, 3),
        }


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _close(pipe: IO[bytes] | None) -> None:
    if pipe is not None:
        with contextlib.suppress(OSError):
            pipe.close()


def _discard(pipes: list[IO[bytes]]) -> None:
    """Read ``pipes`` to their end in a thread of their own, dropping the data: the background process that
    holds them lives on instead of dying of SIGPIPE."""

    def run() -> None:
        with selectors.DefaultSelector() as sel:
            for pipe in pipes:
                sel.register(pipe, selectors.EVENT_READ)
            while sel.get_map():
                for key, _ in sel.select():
                    try:
                        chunk = os.read(key.fd, _READ_CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        sel.unregister(key.fileobj)
                        _close(key.fileobj)  # type: ignore[arg-type]

    threading.Thread(target=run, name="discard-output", daemon=True).start()


def execute(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    stdin: bytes | None,
    timeout_s: float,
    ctx: ToolContext,
    cap_bytes: int = DEFAULT_OUTPUT_BYTES,
) -> CommandOutcome:
    """Run ``argv`` to completion, timeout or cancellation; raises ToolError if it cannot start."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise ToolError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc

    captures = {"stdout": _Capture("stdout", cap_bytes), "stderr": _Capture("stderr", cap_bytes)}
    progress_bytes = 0
    pending = memoryview(stdin or b"")
    timed_out = cancelled = background = False
    with selectors.DefaultSelector() as sel:
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                sel.register(pipe, selectors.EVENT_READ, name)
        if proc.stdin is not None:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")

        def drain(key: selectors.SelectorKey) -> bool:
            """Read what one pipe has; True when data came (False: nothing now, or the pipe closed)."""
            nonlocal progress_bytes
            pipe: IO[bytes] = key.fileobj  # type: ignore[assignment]
            try:
                chunk = os.read(key.fd, _READ_CHUNK)
            except BlockingIOError:
                return False
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(pipe)
                _close(pipe)
                return False
            capture = captures[key.data]
            capture.add(chunk)
            if ctx.progress is not None:
                text = capture.decoder.decode(chunk)
                progress_bytes += len(chunk)
                if text:
                    ctx.progress(progress_bytes, text, capture.name)
            return True

        def feed(key: selectors.SelectorKey) -> None:
            nonlocal pending
            try:
                written = os.write(key.fd, pending[:_READ_CHUNK])
            except BlockingIOError:
                return
            except OSError:  # the child closed its stdin: the rest is not wanted
                written = len(pending)
            pending = pending[written:]
            if not pending:
                sel.unregister(key.fileobj)
                _close(proc.stdin)

        deadline = started + timeout_s
        exited_at: float | None = None
        while sel.get_map():
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > PIPE_GRACE_S:
                held: list[IO[bytes]] = [k.fileobj for k in sel.get_map().values() if k.data != "stdin"]  # type: ignore[misc]
                for held_pipe in held:
                    sel.unregister(held_pipe)
                if held:
                    background = True
                    _discard(held)
                break
            if now >= deadline:
                timed_out = True
                break
            if ctx.cancelled.is_set():
                cancelled = True
                break
            for key, _events in sel.select(min(deadline - now, _TICK_S)):
                if key.data == "stdin":
                    feed(key)
                else:
                    drain(key)
        if timed_out or cancelled:
            _kill_group(proc)
            for key in list(sel.get_map().values()):  # what the group wrote before it died
                if key.data != "stdin":
                    for _ in range(64):
                        if not drain(key):
                            break
    _close(proc.stdin)
    if not background:
        _close(proc.stdout)
        _close(proc.stderr)
    exit_code = proc.wait()
    out, err = captures["stdout"], captures["stderr"]
    return CommandOutcome(
        exit_code=exit_code,
        stdout=out.text(),
        stderr=err.text(),
        stdout_bytes=out.total,
        stderr_bytes=err.total,
        truncated=out.truncated or err.truncated,
        timed_out=timed_out,
        cancelled=cancelled,
        background=background,
        duration_s=time.monotonic() - started,
    )


def command_argv(value: Any) -> list[str]:
    """A tool's ``command`` argument: a shell string (run by /bin/sh -c) or an argv array."""
    if isinstance(value, str):
        if not value.strip():
            raise ToolError("argument 'command' must not be empty")
        return ["/bin/sh", "-c", value]
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return list(value)
    raise ToolError("argument 'command' must be a string (run by /bin/sh -c) or a non-empty array of strings")


def command_env(value: Any) -> dict[str, str] | None:
    """A tool's ``env`` argument merged over the agent's environment (null unsets); None when not given."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ToolError("argument 'env' must be an object of string values")
    env = dict(os.environ)
    for key, val in value.items():
        if val is None:
            env.pop(key, None)
        elif isinstance(val, str) and key and "=" not in key:
            env[key] = val
        else:
            raise ToolError(f"env[{key!r}] must be a string (or null to unset), with a name without '='")
    return env


def run_command(args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    check_keys(args, ("command", "cwd", "env", "stdin", "timeout_s", "max_output_bytes"))
    if args.get("command") is None:
        raise ToolError("missing required argument 'command'")
    argv = command_argv(args["command"])
    cwd: str | None = arg_str(args, "cwd", None)
    if cwd is not None and not os.path.isdir(cwd):
        raise ToolError(f"cwd {cwd!r} does not exist or is not a directory")
    stdin: str | None = arg_str(args, "stdin", None)
    timeout_s = arg_number(args, "timeout_s", DEFAULT_TIMEOUT_S, 0.0, MAX_TIMEOUT_S)
    cap: int = arg_int(args, "max_output_bytes", DEFAULT_OUTPUT_BYTES, minimum=256)
    if cap > MAX_OUTPUT_BYTES:
        raise ToolError(f"argument 'max_output_bytes' must be <= {MAX_OUTPUT_BYTES}, got {cap}")
    outcome = execute(
        argv,
        cwd=cwd,
        env=command_env(args.get("env")),
        stdin=stdin.encode("utf-8") if stdin is not None else None,
        timeout_s=timeout_s,
        ctx=ctx,
        cap_bytes=cap,
    )
    if outcome.cancelled:
        return ToolResult.error("run_command was cancelled; its process group was killed")
    structured = outcome.to_structured()
    return ToolResult.ok(structured, command_text(structured))


COMMAND_TOOLS: Final = (
    Tool(
        name="run_command",
        title="Run command",
        description=(
            "Run a command inside the VM and wait for it; returns exit_code, stdout, stderr. command is a shell "
            "string (run by /bin/sh -c) or an argv array (no shell). Each stream keeps its first and last bytes "
            f"up to max_output_bytes (default {DEFAULT_OUTPUT_BYTES}, at most {MAX_OUTPUT_BYTES}); the middle of "
            "longer output is replaced by a '[… N bytes omitted …]' line (truncated: true; stdout_bytes and "
            "stderr_bytes give the full sizes). For more, redirect to a file and read it with file_read. On "
            f"timeout (default {DEFAULT_TIMEOUT_S:g} s) the whole process group is killed (timed_out: true, "
            "exit_code -9). For a process that keeps running (a server, a long build) use process_start. "
            "With a progressToken, output is streamed as "
            "notifications/progress (message = the chunk, _meta.nexus/stream = stdout|stderr)."
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
                "cwd": {"type": "string", "description": "Working directory (default: /)."},
                "env": {
                    "type": "object",
                    "additionalProperties": {"type": ["string", "null"]},
                    "description": "Variables merged over the agent's environment (null unsets).",
                },
                "stdin": {"type": "string", "description": "Text fed to the command's standard input."},
                "timeout_s": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_TIMEOUT_S,
                    "default": DEFAULT_TIMEOUT_S,
                    "description": "Seconds before the process group is killed.",
                },
                "max_output_bytes": {
                    "type": "integer",
                    "minimum": 256,
                    "maximum": MAX_OUTPUT_BYTES,
                    "default": DEFAULT_OUTPUT_BYTES,
                    "description": "Bytes kept per stream: the first quarter and the last three quarters.",
                },
            },
            "required": ["command"],
            "additionalProperties": False,
        },
        handler=run_command,
        destructive=True,
    ),
)
