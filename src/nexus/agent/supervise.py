"""``python3 -S -m nexus.agent.supervise DIR``: run one background process for the agent, and outlive the agent.

The agent starts this with the process's spec as JSON on stdin (argv, cwd, env, segment_bytes) and reads one
JSON line back on stdout: ``{"ok": true}`` once the command runs, or ``{"error": ...}``. This process forks at once
and its parent exits (the agent reaps it): the supervisor is then nobody's child but init's (BusyBox init, systemd
or OpenRC's init reap orphans), so no agent has to be alive to reap it, and a restarted agent owes it nothing.

The supervisor starts the command in a session and process group of its own, with stdin from /dev/null and
stdout and stderr on one pipe it reads into rotating files (``nexus.agent.procfiles``); it never closes that pipe
early, so the command does not die of SIGPIPE when the agent, its MCP session or nexusd goes away. When the
command exits it drains what is left, writes ``status.json`` (exit code; negative = killed by that signal), and
stays while a background child still holds the pipe. It has no stdio of its own afterwards (its stderr goes to
``supervise.log`` in DIR). Standard library only, and little of it: it is one small process per command.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

from nexus.agent.procfiles import PID_FILE, STATUS_FILE, LogWriter, boot_id, proc_start_ticks, write_json

_READ_BYTES = 64 * 1024


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _exit_status(code: int) -> dict[str, Any]:
    name = signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else None
    return {"exit_code": code, "signal": name, "ended_at": _now()}


def _report(message: dict[str, Any]) -> None:
    """Answer the agent, then let go of every inherited stream."""
    os.write(1, json.dumps(message).encode() + b"\n")
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def _pump(proc: subprocess.Popen[bytes], pipe: int, writer: LogWriter, directory: str) -> None:
    """Copy the output to the files until the pipe closes; write the status as soon as the command exits."""
    os.set_blocking(pipe, False)
    pidfd = os.pidfd_open(proc.pid)
    with selectors.DefaultSelector() as sel:
        sel.register(pipe, selectors.EVENT_READ, "out")
        sel.register(pidfd, selectors.EVENT_READ, "exit")

        def drain() -> bool:
            """Read what the pipe holds now; False once it has closed."""
            while True:
                try:
                    chunk = os.read(pipe, _READ_BYTES)
                except BlockingIOError:
                    return True
                if not chunk:
                    sel.unregister(pipe)
                    return False
                writer.write(chunk)

        while sel.get_map():
            for key, _ in sel.select():
                if key.data == "out":
                    drain()
                else:  # exited: what it wrote before is in the pipe already, so the status comes after all of it
                    if pipe in sel.get_map():
                        drain()
                    write_json(os.path.join(directory, STATUS_FILE), _exit_status(proc.wait()))
                    sel.unregister(pidfd)
                    os.close(pidfd)


def main(argv: list[str]) -> int:
    directory = argv[1]
    spec = json.loads(sys.stdin.buffer.read())
    if os.fork() != 0:
        os._exit(0)
    os.chdir("/")
    log = os.open(os.path.join(directory, "supervise.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    os.close(log)
    writer = LogWriter(directory, int(spec["segment_bytes"]))
    pipe, child_end = os.pipe()
    try:
        proc = subprocess.Popen(
            spec["argv"],
            stdin=subprocess.DEVNULL,
            stdout=child_end,
            stderr=child_end,
            cwd=spec["cwd"],
            env=spec["env"],
            start_new_session=True,
        )
    except OSError as exc:
        error = f"cannot start {spec['argv'][0]!r}: {exc.strerror or exc}"
        write_json(os.path.join(directory, STATUS_FILE), {"error": error, "exit_code": None, "ended_at": _now()})
        _report({"error": error})
        return 1
    finally:
        os.close(child_end)
    me = os.getpid()
    write_json(
        os.path.join(directory, PID_FILE),
        {
            "pid": proc.pid,
            "start_ticks": proc_start_ticks(proc.pid, live_only=False),  # it may have ended already
            "boot_id": boot_id(),
            "supervisor_pid": me,
            "supervisor_start_ticks": proc_start_ticks(me),
        },
    )
    _report({"ok": True})
    try:
        _pump(proc, pipe, writer, directory)
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
