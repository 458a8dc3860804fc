"""The agent's archive sessions (``nexus.agent.archive_sessions``) called directly, and its archive tools: the
bounded pipe, a pack and an unpack session end to end, refusals, sessions given up by the host (closed, idle,
connection gone) ending with their threads."""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nexus.agent.archive_sessions import ArchiveSessions, Pipe, PipeFailed
from nexus.agent.tools import Toolbox, ToolContext
from nexus.protocol import (
    ARCHIVE_CLOSE_METHOD,
    ARCHIVE_FINISH_METHOD,
    ARCHIVE_PACK_METHOD,
    ARCHIVE_READ_METHOD,
    ARCHIVE_UNPACK_METHOD,
    ARCHIVE_WRITE_METHOD,
    INVALID_PARAMS,
    JsonRpcError,
)
from tests.helpers import wait_until


def _threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("archive-"))


def _pack_all(sessions: ArchiveSessions, path: Path) -> bytes:
    sid = sessions.call(1, ARCHIVE_PACK_METHOD, {"path": str(path)})["session"]
    data = b""
    while True:
        out = sessions.call(1, ARCHIVE_READ_METHOD, {"session": sid})
        data += base64.b64decode(out["data"])
        if out["eof"]:
            return data


def _write(sessions: ArchiveSessions, sid: str, data: bytes, offset: int = 0) -> dict[str, Any]:
    params = {"session": sid, "offset": offset, "data": base64.b64encode(data).decode()}
    return sessions.call(1, ARCHIVE_WRITE_METHOD, params)


def test_pipe_bounds_and_failures() -> None:
    pipe = Pipe(limit=4, idle_s=0.2)
    pipe.write(b"abcd")
    with pytest.raises(PipeFailed, match="abandoned: no reader"):
        pipe.write(b"e")  # full, and nobody reads
    pipe = Pipe(limit=4, idle_s=5)
    pipe.write(b"abc")
    pipe.close()
    assert pipe.read(2) == b"ab"
    assert not pipe.drained
    assert pipe.read(10) == b"c"
    assert pipe.drained and pipe.read(10) == b""
    pipe = Pipe(limit=4, idle_s=5)
    threading.Timer(0.1, pipe.fail, ("the other end gave up",)).start()
    with pytest.raises(PipeFailed, match="the other end gave up"):
        pipe.read(1)


def test_a_tree_goes_through_a_pack_and_an_unpack_session(tmp_path: Path) -> None:
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "f").write_bytes(bytes(range(256)) * 10_000)
    sessions = ArchiveSessions()
    data = _pack_all(sessions, tmp_path / "src")

    sid = sessions.call(1, ARCHIVE_UNPACK_METHOD, {"path": str(tmp_path / "copy"), "cp": True})["session"]
    half = len(data) // 2
    assert _write(sessions, sid, data[:half]) == {"received": half}
    with pytest.raises(JsonRpcError, match=f"must be {half}"):
        _write(sessions, sid, data[half:], offset=0)  # out of order
    _write(sessions, sid, data[half:], offset=half)
    result = sessions.call(1, ARCHIVE_FINISH_METHOD, {"session": sid})
    assert result == {"path": str(tmp_path / "copy"), "files": 1, "dirs": 2, "symlinks": 0, "hardlinks": 0,
                      "bytes": 2_560_000}  # fmt: skip
    assert (tmp_path / "copy" / "sub" / "f").read_bytes() == (tmp_path / "src" / "sub" / "f").read_bytes()
    wait_until(lambda: sessions.count() == 0 and _threads() == 0, 5, "both sessions to end")


def test_refusals_and_bad_params(tmp_path: Path) -> None:
    sessions = ArchiveSessions()
    with pytest.raises(JsonRpcError, match="cannot archive") as info:
        sessions.call(1, ARCHIVE_PACK_METHOD, {"path": str(tmp_path / "missing")})
    assert info.value.code == INVALID_PARAMS
    with pytest.raises(JsonRpcError, match="no pack session"):
        sessions.call(1, ARCHIVE_READ_METHOD, {"session": "nope"})
    with pytest.raises(JsonRpcError, match='"path"'):
        sessions.call(1, ARCHIVE_UNPACK_METHOD, {})

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info_ = tarfile.TarInfo("../escaped")
        tar.addfile(info_, io.BytesIO())
    sid = sessions.call(1, ARCHIVE_UNPACK_METHOD, {"path": str(tmp_path / "dest")})["session"]
    _write(sessions, sid, evil.getvalue())
    with pytest.raises(JsonRpcError, match=r"'\.\./escaped' refused") as info:
        sessions.call(1, ARCHIVE_FINISH_METHOD, {"session": sid})
    assert info.value.code == INVALID_PARAMS
    assert not (tmp_path / "escaped").exists()
    wait_until(lambda: sessions.count() == 0 and _threads() == 0, 5, "the session to end")


def test_sessions_the_host_gives_up_end(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"\0" * (16 * 1024 * 1024))  # more than the pipe holds
    sessions = ArchiveSessions(idle_s=0.5)
    closed = sessions.call(1, ARCHIVE_PACK_METHOD, {"path": str(tmp_path / "big")})["session"]
    idle = sessions.call(1, ARCHIVE_PACK_METHOD, {"path": str(tmp_path / "big")})["session"]
    dropped = sessions.call(2, ARCHIVE_UNPACK_METHOD, {"path": str(tmp_path / "in")})["session"]
    assert sessions.count() == 3
    assert sessions.call(1, ARCHIVE_CLOSE_METHOD, {"session": closed}) == {"closed": True}
    sessions.drop(2)  # connection 2 ended
    wait_until(lambda: sessions.count() == 1, 5, "the closed and dropped sessions to end")
    started = time.monotonic()
    wait_until(lambda: sessions.count() == 0 and _threads() == 0, 5, "the idle session to end")
    assert time.monotonic() - started < 2.5  # idle_s, then idle_s waiting for the host to hear
    assert sessions.call(1, ARCHIVE_CLOSE_METHOD, {"session": idle}) == {"closed": False}
    with pytest.raises(JsonRpcError, match="no unpack session"):
        _write(sessions, dropped, b"x")


def test_sessions_are_limited(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    sessions = ArchiveSessions(max_sessions=1)
    sid = sessions.call(1, ARCHIVE_PACK_METHOD, {"path": str(tmp_path / "f")})["session"]
    with pytest.raises(JsonRpcError, match="too many archive sessions"):
        sessions.call(1, ARCHIVE_UNPACK_METHOD, {"path": str(tmp_path / "d")})
    sessions.call(1, ARCHIVE_CLOSE_METHOD, {"session": sid})
    wait_until(lambda: sessions.count() == 0, 5, "the session to end")


# --- the tools -------------------------------------------------------------------------------------------------


def test_archive_create_and_extract(tmp_path: Path) -> None:
    tools = Toolbox()
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "sub" / "f").write_text("hello\n")
    (tmp_path / "b").write_text("b\n")
    out = tmp_path / "a" / "out.tar.gz"  # inside a tree it packs: left out of itself
    res = tools.call("archive_create", {"paths": [str(tmp_path / "a"), str(tmp_path / "b")], "output": str(out)})
    assert not res.is_error, res.text
    assert res.structured["compression"] == "gzip" and res.structured["files"] == 2
    assert res.structured["size"] == out.stat().st_size
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(out.read_bytes()))) as tar:
        assert tar.getnames() == ["a", "a/sub", "a/sub/f", "b"]
    assert [p.name for p in (tmp_path / "a").iterdir() if p.name.endswith(".part")] == []

    res = tools.call("archive_extract", {"archive": str(out), "destination": str(tmp_path / "x")})
    assert not res.is_error, res.text
    assert res.structured["files"] == 2 and res.structured["dirs"] == 2
    assert (tmp_path / "x" / "a" / "sub" / "f").read_text() == "hello\n"

    res = tools.call("archive_create", {"paths": [str(tmp_path / "a"), str(tmp_path / "x" / "a")], "output": "/t.tar"})
    assert res.is_error and "two paths are named 'a'" in res.text
    res = tools.call("archive_create", {"paths": [str(tmp_path / "nope")], "output": str(tmp_path / "n.tar")})
    assert res.is_error and "does not exist" in res.text


def test_a_cancelled_archive_create_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("x")
    cancelled = threading.Event()
    cancelled.set()
    ctx = ToolContext(cancelled=cancelled)
    res = Toolbox().call("archive_create", {"paths": [str(tmp_path / "t")], "output": str(tmp_path / "o.tar")}, ctx)
    assert res.is_error and "cancelled" in res.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
