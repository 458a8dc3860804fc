"""``nexus-mcp``: a stdio MCP server inside a portal VM, served by nexusd through the agent's gateway.

``claude mcp add work -- nexus-mcp``. It connects to the gateway's Unix socket (``gateway_unix``) and copies
bytes both ways - the socket already speaks MCP's stdio framing. stdin ending ends the session: exit 0 once
the agent has flushed what it had for us (or after ``DRAIN_S``). The gateway ending the session first, or no
gateway at all, is one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final

from nexus.agent.config import DEFAULT_GATEWAY_SOCKET

__all__ = ["main"]

DRAIN_S: Final = 5.0
_CHUNK: Final = 64 * 1024
_TICK_S: Final = 0.25


def _fail(message: str) -> int:
    print(f"nexus-mcp: {message}", file=sys.stderr, flush=True)
    return 1


def _pump_stdin(sock: socket.socket, done: threading.Event) -> None:
    try:
        while data := os.read(0, _CHUNK):
            sock.sendall(data)
    except OSError:
        pass  # the gateway went away: the main loop sees it
    finally:
        done.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # the agent ends the session and closes after flushing


def _write_stdout(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nexus-mcp", description="MCP over stdio to nexusd, through this VM's Nexus gateway."
    )
    parser.add_argument("--socket", default=DEFAULT_GATEWAY_SOCKET, help="the gateway's Unix socket")
    path = parser.parse_args(argv).socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return _fail(f"the Nexus gateway is not running in this VM (no {path})")
    except OSError as exc:
        sock.close()
        return _fail(f"cannot connect to the Nexus gateway at {path}: {exc.strerror or exc}")
    stdin_done = threading.Event()
    threading.Thread(target=_pump_stdin, args=(sock, stdin_done), name="stdin", daemon=True).start()
    deadline: float | None = None
    try:
        while True:
            if deadline is None and stdin_done.is_set():
                deadline = time.monotonic() + DRAIN_S
            if deadline is not None and time.monotonic() > deadline:
                return 0
            if not select.select([sock], [], [], _TICK_S)[0]:
                continue
            try:
                data = sock.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            _write_stdout(data)
    except BrokenPipeError:
        return 0  # whoever started us stopped reading
    finally:
        sock.close()
    if stdin_done.is_set():
        return 0
    return _fail("the Nexus gateway ended this session (nexusd ended it, or the agent stopped)")


if __name__ == "__main__":
    sys.exit(main())
