"""A program on a pseudo-terminal of this host, as a user's terminal runs it (``nexusctl vm shell`` in the tests):
keys in, output matched against patterns, window size changes (SIGWINCH to its foreground job)."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time


class Terminal:
    """A program on a pseudo-terminal of this host (the user's terminal, as nexusctl sees it)."""

    def __init__(self, argv: list[str], rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()
        self.resize(rows, cols)
        self.proc = subprocess.Popen(
            argv,
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:  # the kernel sends SIGWINCH to the terminal's foreground job
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout_s: float = 15.0) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout_s
        while (found := re.search(pattern, self.seen)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.seen[-2000:]!r}")
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    raise AssertionError(f"terminal closed; no {pattern!r} in {self.seen[-2000:]!r}") from None
        self.seen = self.seen[found.end() :]
        return found

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)
