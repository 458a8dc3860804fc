"""Terminal sessions in the guest: a program on a pseudo-terminal, its output kept for readers, its input queued.

A ``PtySession`` owns one child (its own session and process group, the PTY as its controlling terminal, so ^C
reaches the foreground job as SIGINT and a resize as SIGWINCH), the PTY's master side and one I/O thread. The
thread reads output into a buffer addressed by absolute offsets (``RING_BYTES`` kept; older output is dropped and
reported as ``lost``), writes queued input when the terminal takes it, answers pending reads (``read_async``: a
long-poll that holds no thread while it waits), reaps the child and closes an idle session.

Two kinds of reader:
- a connection that opened the session (``owner``: ``nexus/pty_*`` from nexusd's terminal bridge) reads exact
  bytes by offset; reading at an offset acknowledges what came before, and unacknowledged output is never
  dropped: the thread stops reading the PTY instead, so a slow client slows the program down, as a slow terminal
  would. Its sessions end with its connection.
- the ``shell_*`` tools (no owner) read with a cursor of the session's own ("new output since the last read") and
  a ``Screen`` fed with everything; what a model does not read in time is dropped from the buffer.

Ending: when the child exits, output still arriving within ``EXIT_DRAIN_S`` is kept (a background job holding the
terminal does not keep it open beyond that); readers get the rest, then ``exited`` and the exit code. ``close``
(or ``idle_timeout_s`` with no read, write or pending read) hangs the terminal up, sends SIGHUP to the child's
process group and SIGKILL ``KILL_GRACE_S`` later, then forgets the session. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import pwd
import selectors
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from nexus.agent.screen import Screen

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "MAX_SESSIONS",
    "RING_BYTES",
    "PtyError",
    "PtySession",
    "PtySessions",
    "ReadResult",
    "ScreenView",
]

log = logging.getLogger("nexus.agent")

RING_BYTES: Final = 1024 * 1024
INPUT_BYTES: Final = 1024 * 1024  # queued input not yet taken by the terminal
MAX_SESSIONS: Final = 16
DEFAULT_IDLE_TIMEOUT_S: Final = 15 * 60.0
KILL_GRACE_S: Final = 2.0
EXIT_DRAIN_S: Final = 0.5
_TICK_S: Final = 0.25
_REAP_TICK_S: Final = 0.02
_READ_CHUNK: Final = 64 * 1024


class PtyError(Exception):
    """A request the caller can fix (unknown session, bad size, full input queue...)."""


@dataclass(frozen=True, slots=True)
class ReadResult:
    data: bytes
    offset: int  # where the next read starts: the end of ``data``
    lost: int  # bytes between the offset asked for and ``data`` that were dropped from the buffer
    exited: bool  # the child exited and all its output has been read
    exit_code: int | None


@dataclass(frozen=True, slots=True)
class ScreenView:
    text: str
    row: int
    col: int
    rows: int
    cols: int
    alternate: bool


Answer = Callable[[ReadResult], None]


@dataclass(slots=True)
class _Waiter:
    offset: int
    max_bytes: int
    deadline: float
    answer: Answer
    conn: int | None


def _winsize(rows: int, cols: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


def _take_terminal() -> None:
    """In the child, after setsid: make stdin (the PTY) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def login_shell() -> tuple[list[str], dict[str, str], str]:
    """The current user's shell as a login shell, their variables (HOME, USER, LOGNAME, SHELL) and home."""
    try:
        entry = pwd.getpwuid(os.getuid())
        shell, home, user = entry.pw_shell, entry.pw_dir, entry.pw_name
    except KeyError:
        shell, home, user = "", "/", str(os.getuid())
    if not shell or not os.access(shell, os.X_OK):
        shell = "/bin/sh"
    return [shell, "-l"], {"HOME": home, "USER": user, "LOGNAME": user, "SHELL": shell}, home


class PtySession:
    """One program on one PTY; see the module docstring. Thread-safe."""

    def __init__(
        self,
        session_id: str,
        argv: Sequence[str],
        *,
        rows: int,
        cols: int,
        cwd: str,
        env: dict[str, str],
        idle_timeout_s: float,
        owner: int | None,
        screen: bool,
        on_end: Callable[[PtySession], None],
    ) -> None:
        self.id = session_id
        self.argv = list(argv)
        self.owner = owner
        self.idle_timeout_s = idle_timeout_s
        self.rows, self.cols = rows, cols
        self.screen = Screen(rows, cols) if screen else None
        self._on_end = on_end
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._buf = bytearray()
        self._base = 0  # offset of _buf[0]
        self._acked = 0  # the owner has read everything before this
        self.cursor = 0  # the shell_* tools' read position
        self._input = bytearray()
        self._waiters: list[_Waiter] = []
        self._last_active = time.monotonic()
        self._eof = False  # nothing more will be read from the PTY
        self._exited_at: float | None = None
        self.exit_code: int | None = None
        self._closing = False
        self.close_reason = ""
        self._kill_at: float | None = None
        master, slave = os.openpty()
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, _winsize(rows, cols))
            self._proc = subprocess.Popen(
                self.argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_take_terminal,  # one ioctl between fork and exec: safe enough with threads
                close_fds=True,
            )
        except OSError as exc:
            os.close(master)
            raise PtyError(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}") from exc
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.pid = self._proc.pid
        os.set_blocking(master, False)
        self._master: int | None = master
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name=f"pty-{session_id}", daemon=True)
        self._thread.start()

    # --- callers' side -------------------------------------------------------------------------------

    @property
    def exited(self) -> bool:
        return self.exit_code is not None

    @property
    def end_offset(self) -> int:
        with self._lock:
            return self._base + len(self._buf)

    def wait_read(self, offset: int | None, max_bytes: int, wait_s: float, settle_s: float = 0.0) -> ReadResult:
        """The output from ``offset`` (``lost``: how much of it the buffer dropped), waiting up to ``wait_s`` for
        some to come, then up to ``settle_s`` more until it pauses that long (whole lines rather than the first
        bytes of them). ``offset`` None: from the tools' cursor, which moves past what is returned."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            self._touch()
            advance = offset is None
            offset = self.cursor if offset is None else offset
            while not self._ready(offset) and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            end, quiet_since = self._base + len(self._buf), time.monotonic()
            while settle_s > 0 and end > offset and not self._ended:
                left = min(deadline, quiet_since + settle_s) - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
                if self._base + len(self._buf) > end:
                    end, quiet_since = self._base + len(self._buf), time.monotonic()
            self._touch()
            result = self._take(offset, max_bytes)
            if advance:
                self.cursor = result.offset
            return result

    def screen_view(self) -> ScreenView | None:
        """What the screen shows now (None for a session opened without a screen)."""
        with self._lock:
            if self.screen is None:
                return None
            cursor = self.screen.cursor
            return ScreenView(self.screen.text(), cursor.row, cursor.col, self.rows, self.cols, self.screen.alternate)

    @property
    def app_cursor_keys(self) -> bool:
        return self.screen is not None and self.screen.app_cursor_keys

    def read_async(self, offset: int, max_bytes: int, wait_s: float, answer: Answer, conn: int | None) -> None:
        """Call ``answer`` (from this thread or the session's) once there is output past ``offset``, the session
        ended, or ``wait_s`` passed."""
        with self._lock:
            self._touch()
            if self._ready(offset) or wait_s <= 0:
                result = self._take(offset, max_bytes)
            else:
                self._waiters.append(_Waiter(offset, max_bytes, time.monotonic() + wait_s, answer, conn))
                result = None
        if result is None:
            self._wake()
        else:
            answer(result)

    def write(self, data: bytes, *, strict: bool = True) -> None:
        """Queue ``data`` for the terminal's input. Once the terminal has ended: PtyError, or with ``strict``
        False the data is dropped, as a hung-up terminal drops it (a client's keys may cross the program's end)."""
        with self._lock:
            self._touch()
            if self._eof:
                if not strict:
                    return
                raise PtyError(f"session {self.id} has ended (exit code {self.exit_code}); nothing reads input")
            if len(self._input) + len(data) > INPUT_BYTES:
                raise PtyError(f"session {self.id}: {INPUT_BYTES} bytes of input wait for the program; try later")
            self._input += data
        self._wake()

    def resize(self, rows: int, cols: int) -> None:
        with self._lock:
            self._touch()
            self.rows, self.cols = rows, cols
            if self.screen is not None:
                self.screen.resize(rows, cols)
            if self._master is not None:  # the kernel sends SIGWINCH to the foreground job
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, _winsize(rows, cols))

    def close(self, reason: str = "closed") -> None:
        """Hang up and kill (see the module docstring); returns at once, the session's thread finishes it."""
        with self._lock:
            if not self._closing:
                self._closing, self.close_reason = True, reason
        self._wake()

    def drop_waiters(self, conn: int) -> None:
        with self._lock:
            self._waiters = [w for w in self._waiters if w.conn != conn]

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    # --- internals (under the lock unless said) ------------------------------------------------------

    def _touch(self) -> None:
        self._last_active = time.monotonic()

    @property
    def _ended(self) -> bool:
        return self._eof and self.exit_code is not None

    def _ready(self, offset: int) -> bool:
        """Has a read at ``offset`` something to say: output, or the end?"""
        return self._base + len(self._buf) > offset or self._ended

    def _take(self, offset: int, max_bytes: int) -> ReadResult:
        if self.owner is not None:
            self._acked = max(self._acked, min(offset, self._base + len(self._buf)))
        start = max(offset, self._base)
        lost = start - offset if offset < self._base else 0
        data = bytes(self._buf[start - self._base : start - self._base + max_bytes])
        end = start + len(data)
        done = self._ended and end >= self._base + len(self._buf)
        return ReadResult(data, end, lost, done, self.exit_code if done else None)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _room(self) -> bool:
        """May the thread read more output (an owner's unacknowledged output fills at most the buffer)?"""
        if self.owner is None:
            return True
        return self._base + len(self._buf) - max(self._acked, self._base) < RING_BYTES

    def _append(self, chunk: bytes) -> None:
        self._buf += chunk
        if self.screen is not None:
            self.screen.feed(chunk)
        excess = len(self._buf) - RING_BYTES
        if self.owner is not None:
            excess = min(excess, self._acked - self._base)
        if excess > 0:
            del self._buf[:excess]
            self._base += excess

    def _answer_waiters(self, now: float) -> list[tuple[Answer, ReadResult]]:
        due, keep = [], []
        for waiter in self._waiters:
            if self._ready(waiter.offset) or now >= waiter.deadline:
                due.append((waiter.answer, self._take(waiter.offset, waiter.max_bytes)))
            else:
                keep.append(waiter)
        self._waiters = keep
        if due:
            self._touch()
        return due

    # --- the session's thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self._step(sel):
                    pass
        except Exception:
            log.exception("pty %s: session thread failed", self.id)
            self._kill(signal.SIGKILL)
        finally:
            self._finish()

    def _step(self, sel: selectors.BaseSelector) -> bool:
        """One turn of the thread's loop; True when the session is over."""
        with self._lock:
            master = self._master
            events = 0
            if master is not None:
                events = (selectors.EVENT_READ if self._room() else 0) | (selectors.EVENT_WRITE if self._input else 0)
            # after the terminal's end, the exit status is due at once: look sooner than every tick
            tick = _REAP_TICK_S if self._eof and self.exit_code is None and not self._closing else _TICK_S
            timeout = min([tick, *(w.deadline - time.monotonic() for w in self._waiters)])
        if master is not None:
            registered = sel.get_map().get(master)
            if registered is not None and (not events or registered.events != events):
                sel.unregister(master)
                registered = None
            if registered is None and events:
                sel.register(master, events)
        for key, mask in sel.select(max(timeout, 0.0)):
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            else:
                if mask & selectors.EVENT_WRITE:
                    self._feed_input(key.fd)
                if mask & selectors.EVENT_READ:
                    self._read_output(key.fd, sel)
        return self._tend(sel)

    def _read_output(self, fd: int, sel: selectors.BaseSelector) -> None:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the terminal's other side has closed it
            chunk = b""
        with self._changed:
            if chunk:
                self._append(chunk)
            else:
                self._eof = True
                self._close_master(sel)
            self._changed.notify_all()

    def _feed_input(self, fd: int) -> None:
        with self._lock:
            pending = bytes(self._input[:_READ_CHUNK])
        try:
            written = os.write(fd, pending)
        except BlockingIOError:
            return
        except OSError:  # hung up: input has no reader any more
            written = len(pending)
        with self._lock:
            del self._input[:written]

    def _close_master(self, sel: selectors.BaseSelector) -> None:
        """Under the lock: stop reading the terminal and close our side of it (a hangup for what still holds it)."""
        if self._master is not None:
            if self._master in sel.get_map():
                sel.unregister(self._master)
            os.close(self._master)
            self._master = None
        self._input.clear()

    def _kill(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def _tend(self, sel: selectors.BaseSelector) -> bool:
        """Reap, drain, hang up, kill, time out, answer waiters; True when the session is over."""
        now = time.monotonic()
        if self.exit_code is None and self._proc.poll() is not None:
            with self._changed:
                self.exit_code = self._proc.returncode
                self._exited_at = now
                self._changed.notify_all()
        with self._changed:
            if self._exited_at is not None and not self._eof and now - self._exited_at >= EXIT_DRAIN_S:
                self._eof = True  # a background job holds the terminal: the session ends with its main program
                self._close_master(sel)
                self._changed.notify_all()
            idle = now - self._last_active >= self.idle_timeout_s and not self._waiters
            if idle and not self._closing:
                self._closing, self.close_reason = True, f"idle for {self.idle_timeout_s:g} s"
            closing, hangup = self._closing, self._closing and self._kill_at is None
            if hangup:
                self._kill_at = now + KILL_GRACE_S
                self._eof = True
                self._close_master(sel)
                self._changed.notify_all()
            due = self._answer_waiters(now)
        for answer, result in due:
            answer(result)
        if closing and self.exit_code is None:
            if hangup:
                self._kill(signal.SIGHUP)
                self._kill(signal.SIGCONT)  # a stopped job must run to see the hangup
            elif self._kill_at is not None and now >= self._kill_at:
                self._kill(signal.SIGKILL)
        return closing and self.exit_code is not None

    def _finish(self) -> None:
        with self._changed:
            self._eof = True
            self._closing = True
            self._close_master_quietly()
            self._changed.notify_all()
            due = self._answer_waiters(float("inf"))
        for answer, result in due:
            answer(result)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        log.info("pty %s: closed (%s; exit code %s)", self.id, self.close_reason or "ended", self.exit_code)
        self._on_end(self)

    def _close_master_quietly(self) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None


class PtySessions:
    """The agent's terminal sessions, at most ``max_sessions`` at once."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._sessions: dict[str, PtySession] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def open(
        self,
        command: Sequence[str] | None,
        *,
        rows: int,
        cols: int,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        owner: int | None = None,
        screen: bool = False,
    ) -> PtySession:
        shell, user_env, home = login_shell()
        argv = list(command) if command else shell
        environment = {**user_env, **os.environ, "TERM": "xterm-256color", **(env or {})}
        workdir = cwd if cwd is not None else (home if os.path.isdir(home) else "/")
        if not os.path.isdir(workdir):
            raise PtyError(f"cwd {workdir!r} does not exist or is not a directory")
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                names = ", ".join(sorted(self._sessions))
                raise PtyError(f"{self.max_sessions} sessions are open ({names}); close one first")
            session_id = f"sh-{next(self._ids)}"
            session = PtySession(
                session_id,
                argv,
                rows=rows,
                cols=cols,
                cwd=workdir,
                env=environment,
                idle_timeout_s=idle_timeout_s,
                owner=owner,
                screen=screen,
                on_end=self._forget,
            )
            self._sessions[session_id] = session
        log.info("pty %s: started %s (pid %d, %dx%d)", session_id, argv[0], session.pid, rows, cols)
        return session

    def get(self, session_id: str) -> PtySession:
        with self._lock:
            session = self._sessions.get(session_id)
            known = ", ".join(sorted(self._sessions)) or "none"
        if session is None:
            raise PtyError(f"no session {session_id!r} (closed, idled out or never opened); open sessions: {known}")
        return session

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._sessions)

    def connection_closed(self, conn: int) -> None:
        """A connection ended: its own sessions are closed, its pending reads on others dropped."""
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            if session.owner == conn:
                session.close("its client went away")
            else:
                session.drop_waiters(conn)

    def close_all(self, join_s: float = KILL_GRACE_S + 1.0) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.close("the agent is stopping")
        for session in sessions:
            session.join(join_s)

    def _forget(self, session: PtySession) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
