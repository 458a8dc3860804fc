"""The run_command tool: run a process in the guest, capture its output, stream it as it comes.

``command`` is a string (run by ``/bin/sh -c``) or an argv array (exec'd without a shell). The child
gets its own session and process group; on timeout or cancellation the whole group is SIGKILLed.
Each output stream keeps at most ``OUTPUT_CAP_BYTES``; past that the agent keeps reading and
discarding so the child never blocks on a full pipe, and reports ``truncated: true``. When the main
process has exited but a background child still holds the pipes, output is collected for
``PIPE_GRACE_S`` more and then the pipes are closed (background jobs should redirect their output).

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
import time
from dataclasses import dataclass, field
from typing import IO, Any, Final

from nexus.agent.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    arg_number,
    arg_str,
    check_keys,
)

__all__ = ["COMMAND_TOOLS", "DEFAULT_TIMEOUT_S", "OUTPUT_CAP_BYTES", "CommandOutcome", "execute"]

OUTPUT_CAP_BYTES: Final = 1024 * 1024
DEFAULT_TIMEOUT_S: Final = 60.0
MAX_TIMEOUT_S: Final = 24 * 3600.0
PIPE_GRACE_S: Final = 0.5
_READ_CHUNK: Final = 64 * 1024
_TICK_S: Final = 0.1


@dataclass(slots=True)
class _Capture:
    """One output stream: the kept bytes, whether some were dropped, an incremental decoder for streaming."""

    name: str
    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )

    def add(self, chunk: bytes) -> bytes:
        """Keep what fits under the cap; returns the kept part."""
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk
        return chunk


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    exit_code: int | None
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool
    cancelled: bool
    duration_s: float

    def to_structured(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "truncated": self.truncated,
            "timed_out": self.timed_out,
            "duration_s": round(self.duration_s, 3),
        }


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _close(pipe: IO[bytes] | None) -> None:
    if pipe is not None:
        with contextlib.suppress(OSError):
            pipe.close()


def execute(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str] | None,
    stdin: bytes | None,
    timeout_s: float,
    ctx: ToolContext,
    cap_bytes: int = OUTPUT_CAP_BYTES,
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
    timed_out = cancelled = False
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
            kept = capture.add(chunk)
            if kept and ctx.progress is not None:
                text = capture.decoder.decode(kept)
                progress_bytes += len(kept)
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
                break  # a background child holds the pipes open
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
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        _close(pipe)
    exit_code = proc.wait()
    out, err = captures["stdout"], captures["stderr"]
    return CommandOutcome(
        exit_code=exit_code,
        stdout=out.data.decode("utf-8", errors="replace"),
        stderr=err.data.decode("utf-8", errors="replace"),
        truncated=out.truncated or err.truncated,
        timed_out=timed_out,
        cancelled=cancelled,
        duration_s=time.monotonic() - started,
    )


def _argv(value: Any) -> list[str]:
    if isinstance(value, str):
        if not value.strip():
            raise ToolError("argument 'command' must not be empty")
        return ["/bin/sh", "-c", value]
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return list(value)
    raise ToolError("argument 'command' must be a string (run by /bin/sh -c) or a non-empty array of strings")


def _env(value: Any) -> dict[str, str] | None:
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
    check_keys(args, ("command", "cwd", "env", "stdin", "timeout_s"))
    if args.get("command") is None:
        raise ToolError("missing required argument 'command'")
    argv = _argv(args["command"])
    cwd: str | None = arg_str(args, "cwd", None)
    if cwd is not None and not os.path.isdir(cwd):
        raise ToolError(f"cwd {cwd!r} does not exist or is not a directory")
    stdin: str | None = arg_str(args, "stdin", None)
    timeout_s = arg_number(args, "timeout_s", DEFAULT_TIMEOUT_S, 0.0, MAX_TIMEOUT_S)
    outcome = execute(
        argv,
        cwd=cwd,
        env=_env(args.get("env")),
        stdin=stdin.encode("utf-8") if stdin is not None else None,
        timeout_s=timeout_s,
        ctx=ctx,
    )
    if outcome.cancelled:
        return ToolResult.error("run_command was cancelled; its process group was killed")
    return ToolResult.ok(outcome.to_structured())


COMMAND_TOOLS: Final = (
    Tool(
        name="run_command",
        title="Run command",
        description=(
            "Run a command inside the VM and return exit_code, stdout, stderr. command is a shell string "
            "(run by /bin/sh -c) or an argv array (no shell). Output is capped at "
            f"{OUTPUT_CAP_BYTES} bytes per stream (truncated: true past it). On timeout the whole process "
            "group is killed (timed_out: true, exit_code -9). With a progressToken, output is streamed as "
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
            },
            "required": ["command"],
            "additionalProperties": False,
        },
        handler=run_command,
        destructive=True,
    ),
)
