"""The agent's terminal sessions (``nexus.agent.pty_sessions``) with real programs on real PTYs: output kept exactly
for an owning connection and dropped for the tools' reader, long-poll reads, hangup and kill, the idle timeout,
the session cap and what a closed connection takes with it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from nexus.agent.pty_sessions import RING_BYTES, PtyError, PtySession, PtySessions, ReadResult
from tests.helpers import wait_until


@pytest.fixture
def sessions() -> Iterator[PtySessions]:
    registry = PtySessions(max_sessions=3)
    yield registry
    registry.close_all()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def read_all(session: PtySession, offset: int = 0, chunk: int = 65536) -> tuple[bytes, ReadResult]:
    data = bytearray()
    while True:
        result = session.wait_read(offset, chunk, 10.0)
        assert result.lost == 0
        data += result.data
        offset = result.offset
        if result.exited:
            return bytes(data), result


def test_an_owners_output_is_never_dropped_the_program_waits_instead(sessions: PtySessions) -> None:
    size = 3 * RING_BYTES
    session = sessions.open(["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x"], rows=24, cols=80, owner=1)
    time.sleep(1.0)  # the program fills the buffer and then waits for the reader
    assert session.end_offset <= RING_BYTES + 65536 and not session.exited
    data, result = read_all(session)
    assert data.count(b"x") == size and result.exit_code == 0


def test_the_tools_reader_loses_what_it_did_not_read_in_time(sessions: PtySessions) -> None:
    size = 3 * RING_BYTES
    session = sessions.open(["sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x"], rows=24, cols=80)
    wait_until(lambda: session.exited, 20, "the program to exit")
    result = session.wait_read(None, 8 * RING_BYTES, 5.0)
    assert result.lost > 0 and result.lost + len(result.data) == result.offset
    assert len(result.data) <= RING_BYTES and result.exited and result.exit_code == 0
    assert session.cursor == result.offset


def test_read_async_answers_when_output_comes_or_when_the_wait_ends(sessions: PtySessions) -> None:
    session = sessions.open(["cat"], rows=24, cols=80, owner=1)
    answers: list[ReadResult] = []
    got = threading.Event()

    def answer(result: ReadResult) -> None:
        answers.append(result)
        got.set()

    started = time.monotonic()
    session.read_async(0, 1024, 0.3, answer, conn=1)
    assert got.wait(5) and answers[0].data == b"" and time.monotonic() - started >= 0.29
    got.clear()
    session.read_async(0, 1024, 30.0, answer, conn=1)
    session.write(b"hi\r")
    assert got.wait(5) and answers[1].data.startswith(b"hi")  # the echo, at once, long before 30 s


def test_close_hangs_up_then_kills_what_ignores_the_hangup(sessions: PtySessions) -> None:
    session = sessions.open(["sh", "-c", "trap '' HUP; echo ready; sleep 600"], rows=24, cols=80)
    assert b"ready" in session.wait_read(0, 1024, 5.0, 0.2).data
    started = time.monotonic()
    session.close()
    session.join(10)
    assert session.exit_code == -9 and 1.5 < time.monotonic() - started < 5
    assert not alive(session.pid) and sessions.ids() == []


def test_an_idle_session_is_closed(sessions: PtySessions) -> None:
    session = sessions.open(["sleep", "600"], rows=24, cols=80, idle_timeout_s=0.5)
    wait_until(lambda: not sessions.ids(), 5, "the idle session to close")
    assert not alive(session.pid) and session.close_reason == "idle for 0.5 s"
    with pytest.raises(PtyError, match=r"no session 'sh-1'.*open sessions: none"):
        sessions.get(session.id)


def test_a_pending_read_keeps_a_session_from_idling_out(sessions: PtySessions) -> None:
    session = sessions.open(["sleep", "600"], rows=24, cols=80, idle_timeout_s=0.3, owner=1)
    session.read_async(0, 1024, 1.0, lambda _result: None, conn=1)
    time.sleep(0.6)
    assert sessions.ids() == [session.id]


def test_the_cap_a_bad_command_and_a_closed_connection(sessions: PtySessions) -> None:
    mine = [sessions.open(["cat"], rows=24, cols=80, owner=7) for _ in range(2)]
    other = sessions.open(["cat"], rows=24, cols=80, owner=8)
    with pytest.raises(PtyError, match="3 sessions are open"):
        sessions.open(["cat"], rows=24, cols=80)
    sessions.connection_closed(7)
    wait_until(lambda: sessions.ids() == [other.id], 5, "the connection's sessions to close")
    assert not any(alive(s.pid) for s in mine)
    with pytest.raises(PtyError, match="cannot start '/nonexistent'"):
        sessions.open(["/nonexistent"], rows=24, cols=80)
    assert sessions.ids() == [other.id]


def test_exit_code_of_a_signal_and_the_terminal_the_program_sees(sessions: PtySessions) -> None:
    session = sessions.open(["sh", "-c", "stty size; tty; echo $TERM; kill -9 $$"], rows=33, cols=101)
    data, result = read_all(session)
    lines = data.decode().split("\r\n")
    assert lines[0] == "33 101" and lines[1].startswith("/dev/pts/") and lines[2] == "xterm-256color"
    assert result.exit_code == -9
    fds = os.listdir("/proc/self/fd")
    session.close()
    session.join(5)
    assert len(os.listdir("/proc/self/fd")) < len(fds)  # the master and the wake pipe are closed
