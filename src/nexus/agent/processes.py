"""Background processes that outlive a tool call: the table the process_* tools work on.

Each process is a directory under the table's root (``--process-dir``, default ``/run/nexus/processes``: a
tmpfs, so nothing of a previous boot is left; files in ``nexus.agent.procfiles``) and a supervisor
(``nexus.agent.supervise``) that owns the command, its output and its exit status. The table keeps nothing in
memory: every answer is read from the directory, so an agent that restarted (or a second one) lists and controls
processes it never started. A pid is taken for the process only while ``/proc/PID/stat`` shows the start time and
the boot the supervisor recorded, so a recycled pid is never signalled. Ids are ``p1``, ``p2``... in the order
started (never reused while the root lives: a counter file); a ``name`` is unique among running processes; a
process can be named by either.

Finished records are kept (the newest ``KEEP_FINISHED``) so their output and exit status can still be read.
Readiness (``await_ready``): a TCP port on 127.0.0.1 that accepts, or a regular expression matching a line of
output, checked every ``POLL_S`` until the deadline or the process's exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

import nexus
from nexus.agent.procfiles import (
    PID_FILE,
    REASON_FILE,
    SPEC_FILE,
    STATUS_FILE,
    boot_id,
    proc_start_ticks,
    read_json,
    read_output,
    segments,
    write_json,
)

__all__ = [
    "DEFAULT_LOG_BYTES",
    "KEEP_FINISHED",
    "MAX_LOG_BYTES",
    "MIN_LOG_BYTES",
    "NAME_RE",
    "OutputSlice",
    "ProcessConflict",
    "ProcessInfo",
    "ProcessTable",
    "StartFailed",
    "UnknownProcess",
]

DEFAULT_LOG_BYTES: Final = 8 * 1024 * 1024  # kept per process, in two segments (tmpfs in the guest: memory)
MIN_LOG_BYTES: Final = 64 * 1024
MAX_LOG_BYTES: Final = 256 * 1024 * 1024
KEEP_FINISHED: Final = 100
START_TIMEOUT_S: Final = 30.0  # for the supervisor to say the command runs (a python start under TCG is slow)
POLL_S: Final = 0.1
SETTLE_S: Final = 2.0  # a command that ended has its status written by its supervisor within this
ID_RE: Final = re.compile(r"p[1-9][0-9]{0,9}")
NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
_SCAN_BYTES: Final = 1024 * 1024
_PENDING_BYTES: Final = 64 * 1024


class UnknownProcess(LookupError):
    """No process by that id or name."""


class StartFailed(Exception):
    """The command could not be started (the message says why); nothing of it is left."""


class ProcessConflict(Exception):
    """The request does not fit the process's state (not running) or the table (name taken)."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    id: str
    name: str | None
    command: str | list[str]
    cwd: str
    pid: int | None
    state: str  # running | exited | lost (ended while nobody watched: no exit status)
    exit_code: int | None  # negative: killed by that signal
    signal: str | None
    started_at: str
    ended_at: str | None
    output_bytes: int
    reason: str | None  # why nexus stopped it (a readiness check that failed)
    path: str  # its directory

    @property
    def running(self) -> bool:
        return self.state == "running"

    def describe(self) -> str:
        """How it ended, in words."""
        if self.running:
            return "running"
        if self.signal is not None:
            return f"killed by {self.signal}"
        if self.exit_code is not None:
            return f"exited with {self.exit_code}"
        return "ended; its exit status is unknown (its supervisor is gone)"

    def to_structured(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "command": self.command,
            "cwd": self.cwd,
            "pid": self.pid,
            "state": self.state,
            "running": self.running,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "output_bytes": self.output_bytes,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class OutputSlice:
    info: ProcessInfo
    data: bytes
    offset: int  # of data's first byte
    first: int  # the oldest offset still kept (what is before it was rotated away)
    total: int  # bytes written in all

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _alive(pids: dict[str, Any], key: str, boot: str) -> bool:
    pid, ticks = pids.get(key), pids.get(key.replace("pid", "start_ticks"))
    if not isinstance(pid, int) or pids.get("boot_id") != boot:
        return False
    return ticks is not None and proc_start_ticks(pid) == ticks


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


class ProcessTable:
    """The processes under ``root``; thread-safe, and safe beside another agent on the same root (a file lock)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._boot = boot_id()

    # -- starting ---------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Any:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a new open file description per call: threads exclude each other too
            yield
        finally:
            os.close(fd)

    def _next_id(self) -> str:
        counter = os.path.join(self.root, ".seq")
        last = _read_text(counter)
        number = int(last) + 1 if last and last.isdigit() else 1
        with open(f"{counter}.tmp", "w", encoding="ascii") as f:
            f.write(str(number))
        os.replace(f"{counter}.tmp", counter)
        return f"p{number}"

    def start(
        self,
        argv: list[str],
        *,
        command: str | list[str],
        cwd: str,
        env: dict[str, str],
        name: str | None,
        log_bytes: int,
    ) -> ProcessInfo:
        """Start ``argv`` under a supervisor; returns once it runs. ProcessConflict when ``name`` is taken;
        StartFailed when it cannot start."""
        with self._locked():
            infos = self.list()
            if name is not None:
                taken = next((p for p in infos if p.name == name and p.running), None)
                if taken is not None:
                    raise ProcessConflict(f"name {name!r} is taken by running process {taken.id}")
            self._prune([p for p in infos if not p.running])
            ident = self._next_id()
            directory = os.path.join(self.root, ident)
            os.mkdir(directory, 0o700)
            write_json(
                os.path.join(directory, SPEC_FILE),
                {
                    "id": ident,
                    "name": name,
                    "command": command,
                    "cwd": cwd,
                    "started_at": _now(),
                    "log_bytes": log_bytes,
                },
            )
        try:
            self._launch(directory, {"argv": argv, "cwd": cwd, "env": env, "segment_bytes": log_bytes // 2})
        except (OSError, StartFailed):
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return self._info(ident)

    def _launch(self, directory: str, spec: dict[str, Any]) -> None:
        """Run the supervisor for ``directory`` and wait for its word (see ``nexus.agent.supervise``)."""
        lib = os.path.dirname(os.path.dirname(os.path.abspath(nexus.__file__)))
        proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "nexus.agent.supervise", directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": lib},
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(json.dumps(spec).encode(), timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the supervisor too: it stays in this session (the command does not)
            self._kill_recorded(directory)
            proc.communicate()
            raise StartFailed(f"its supervisor did not answer within {START_TIMEOUT_S:g} s") from None
        try:
            answer = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            detail = err.decode(errors="replace").strip().splitlines()
            raise StartFailed(f"its supervisor failed: {detail[-1] if detail else f'exit {proc.returncode}'}") from None
        if "error" in answer:
            raise StartFailed(str(answer["error"]))

    def _kill_recorded(self, directory: str) -> None:
        """Kill the command a supervisor that never answered may have started."""
        pids = read_json(os.path.join(directory, PID_FILE)) or {}
        if _alive(pids, "pid", self._boot):
            with contextlib.suppress(OSError):
                os.killpg(pids["pid"], signal.SIGKILL)

    def _prune(self, finished: list[ProcessInfo]) -> None:
        for old in sorted(finished, key=lambda p: int(p.id[1:]))[: max(0, len(finished) - KEEP_FINISHED + 1)]:
            shutil.rmtree(old.path, ignore_errors=True)

    # -- reading ----------------------------------------------------------------------------------------------------

    def list(self) -> list[ProcessInfo]:
        """Every process recorded, oldest first."""
        try:
            names = [n for n in os.listdir(self.root) if ID_RE.fullmatch(n)]
        except FileNotFoundError:
            return []
        infos = []
        for ident in sorted(names, key=lambda n: int(n[1:])):
            with contextlib.suppress(UnknownProcess):
                infos.append(self._info(ident))
        return infos

    def get(self, ref: str) -> ProcessInfo:
        """By id, or by name (the running one; else the newest with that name)."""
        if ID_RE.fullmatch(ref):
            return self._info(ref)
        if NAME_RE.fullmatch(ref):
            named = [p for p in self.list() if p.name == ref]
            running = [p for p in named if p.running]
            if running or named:
                return (running or named)[-1]
        raise UnknownProcess(f"no process {ref!r} in this VM (process_list shows them)")

    def _info(self, ident: str) -> ProcessInfo:
        directory = os.path.join(self.root, ident)
        spec = read_json(os.path.join(directory, SPEC_FILE))
        if spec is None:
            raise UnknownProcess(f"no process {ident!r} in this VM (process_list shows them)")
        pids = read_json(os.path.join(directory, PID_FILE)) or {}
        settle = time.monotonic() + SETTLE_S
        while True:
            status = read_json(os.path.join(directory, STATUS_FILE))
            if status is not None:
                state = "exited"
            elif _alive(pids, "pid", self._boot):
                state = "running"
            elif _alive(pids, "supervisor_pid", self._boot) and time.monotonic() < settle:
                time.sleep(POLL_S)  # it has just ended: its supervisor is writing the status
                continue
            else:
                state = "lost"
            break
        found = segments(directory)
        status = status or {}
        return ProcessInfo(
            id=ident,
            name=spec.get("name"),
            command=spec.get("command", ""),
            cwd=spec.get("cwd", "/"),
            pid=pids.get("pid"),
            state=state,
            exit_code=status.get("exit_code"),
            signal=status.get("signal"),
            started_at=spec.get("started_at", ""),
            ended_at=status.get("ended_at"),
            output_bytes=found[-1].end if found else 0,
            reason=_read_text(os.path.join(directory, REASON_FILE)),
            path=directory,
        )

    def output(self, ref: str, offset: int | None, limit: int, tail_lines: int | None) -> OutputSlice:
        """``limit`` bytes from ``offset``, or the last ``tail_lines`` lines within the last ``limit`` bytes. Cut
        before a partial UTF-8 character at the end (the next read from ``next_offset`` starts with it)."""
        info = self.get(ref)
        if tail_lines is not None:
            data, start, first, total = read_output(info.path, max(0, info.output_bytes - limit), limit)
            kept = b"".join(data.splitlines(keepends=True)[-tail_lines:]) if tail_lines else b""
            return OutputSlice(info, kept, start + len(data) - len(kept), first, total)
        data, start, first, total = read_output(info.path, offset or 0, limit)
        return OutputSlice(info, _whole_characters(data, start + len(data) < total), start, first, total)

    # -- acting -----------------------------------------------------------------------------------------------------

    def signal(self, ref: str, signum: int) -> ProcessInfo:
        """Send ``signum`` to the process's group (it and what it started that stayed in it)."""
        info = self.get(ref)
        if not info.running or info.pid is None:
            raise ProcessConflict(f"process {info.id} is not running ({info.describe()})")
        try:
            os.killpg(info.pid, signum)
        except ProcessLookupError:
            raise ProcessConflict(f"process {info.id} is not running (it has just ended)") from None
        return info

    def wait(self, ref: str, timeout_s: float, cancelled: threading.Event) -> ProcessInfo:
        """Once it has ended, or at the deadline (or cancellation) with it still running."""
        deadline = time.monotonic() + timeout_s
        info = self.get(ref)
        while info.running and time.monotonic() < deadline and not cancelled.wait(POLL_S):
            info = self._info(info.id)
        return info

    def stop_unready(self, info: ProcessInfo, reason: str) -> ProcessInfo:
        """Kill a process whose readiness check failed (its whole group), record why, and wait for its end."""
        with open(os.path.join(info.path, REASON_FILE), "w", encoding="utf-8") as f:
            f.write(reason)
        if info.running and info.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(info.pid, signal.SIGKILL)
        return self.wait(info.id, 10.0, threading.Event())

    def await_ready(
        self,
        info: ProcessInfo,
        port: int | None,
        pattern: re.Pattern[str] | None,
        timeout_s: float,
        cancelled: threading.Event,
    ) -> str | None:
        """None once ready; else why not (it ended, the deadline passed, the call was cancelled)."""
        deadline = time.monotonic() + timeout_s
        scanned, pending = 0, b""
        while True:
            current = self._info(info.id)
            if pattern is not None:
                data, start, _, _ = read_output(info.path, scanned, _SCAN_BYTES)
                scanned = start + len(data)
                lines = (pending + data).split(b"\n")
                pending = lines[-1][-_PENDING_BYTES:]
                if any(pattern.search(line.decode("utf-8", "replace")) for line in lines):
                    return None
            if port is not None and _accepts(port):
                return None
            if not current.running:
                return f"it {current.describe()} before it was ready"
            if time.monotonic() >= deadline:
                what = f"port {port} did not accept a connection" if port is not None else "no output line matched"
                return f"{what} within {timeout_s:g} s"
            if cancelled.wait(POLL_S):
                return "the call was cancelled"


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _whole_characters(data: bytes, more: bool) -> bytes:
    """``data`` without a UTF-8 character cut at its end (when more follows, the next read starts with it)."""
    if not more:
        return data
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data
