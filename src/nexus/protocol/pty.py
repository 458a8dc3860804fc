"""The ``nexus/pty_*`` requests of the MCP stream (host → agent): a terminal's exact bytes, for ``nexusctl vm
shell`` and the WebSocket endpoint. Models use the ``shell_*`` MCP tools over the same sessions instead.

Wire shapes (newline-delimited JSON-RPC 2.0; terminal bytes base64 in ``data``):

* ``nexus/pty_open`` ``{"command": [argv] | null, "rows": R, "cols": C, "cwd"?: str, "env"?: {NAME: VALUE}}`` →
  ``{"id": str, "pid": int}``. ``command`` null: the guest user's login shell. The session belongs to the
  connection that opened it and is closed when that connection ends.
* ``nexus/pty_read`` ``{"id", "offset": N, "wait_s": S, "max_bytes"?: M}`` → ``{"data", "offset": END, "lost": L,
  "exited": bool, "exit_code": int | null}``: the output from ``offset`` (``lost`` bytes of it were dropped from
  the buffer first), answered as soon as there is any, or the session ended, or after ``wait_s``. Reading at
  ``offset`` acknowledges everything before it: output a connection's session has not had acknowledged is never
  dropped (the child waits instead, as at a slow terminal). ``exited`` is true once the child has exited and
  everything it wrote has been read; ``exit_code`` then follows Python's convention (-N: killed by signal N).
* ``nexus/pty_write`` ``{"id", "data"}`` → ``{}`` (queued for the terminal's input).
* ``nexus/pty_resize`` ``{"id", "rows", "cols"}`` → ``{}``.
* ``nexus/pty_close`` ``{"id"}`` → ``{}``: hang up (SIGHUP to its process group, SIGKILL 2 s later).

An unknown session id or a bad argument is -32602. Standard library only (the agent imports it).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_COLS",
    "DEFAULT_ROWS",
    "MAX_COLS",
    "MAX_ROWS",
    "PTY_CLOSE",
    "PTY_OPEN",
    "PTY_READ",
    "PTY_READ_BYTES",
    "PTY_RESIZE",
    "PTY_WRITE",
    "PTY_WRITE_BYTES",
]

PTY_OPEN: Final = "nexus/pty_open"
PTY_READ: Final = "nexus/pty_read"
PTY_WRITE: Final = "nexus/pty_write"
PTY_RESIZE: Final = "nexus/pty_resize"
PTY_CLOSE: Final = "nexus/pty_close"

DEFAULT_ROWS: Final = 24
DEFAULT_COLS: Final = 80
MAX_ROWS: Final = 1000
MAX_COLS: Final = 1000
PTY_READ_BYTES: Final = 64 * 1024  # one pty_read answer carries at most this much terminal output
PTY_WRITE_BYTES: Final = 64 * 1024  # one pty_write carries at most this much input
