"""The agent's archive sessions (``nexus.protocol.archive``): a tree packed into a tar stream the host reads in
chunks, or a tar stream the host writes in chunks unpacked into a directory.

Each session is one thread of its own (never a worker of the tool pool, which the chunk calls themselves run
on: a session waiting for a chunk must not hold a worker another chunk call needs) joined to the calls by a
bounded ``Pipe``, so a session holds a few chunks whatever the size of the tree. The thread owns the session:
it removes it when the work is done and the host has heard the outcome, or when the host stops calling for
``idle_s`` (the pipe's waits time out), or when the host's connection ends (``drop``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable
from typing import Any, Final

from nexus.agent.session import Connection
from nexus.protocol import INVALID_PARAMS, INVALID_REQUEST, JsonRpcError, Request, error_response, result_response
from nexus.protocol.archive import (
    ARCHIVE_CHUNK_BYTES,
    ARCHIVE_CLOSE_METHOD,
    ARCHIVE_FAILED,
    ARCHIVE_FINISH_METHOD,
    ARCHIVE_IDLE_S,
    ARCHIVE_PACK_METHOD,
    ARCHIVE_READ_METHOD,
    ARCHIVE_UNPACK_METHOD,
    ARCHIVE_WRITE_METHOD,
    ArchiveError,
    cp_destination,
)
from nexus.protocol.tarpack import pack
from nexus.protocol.tarunpack import Unpacker

__all__ = ["ArchiveSessions", "Pipe", "PipeFailed"]

log = logging.getLogger("nexus.agent")

MAX_SESSIONS: Final = 16
PIPE_BYTES: Final = 4 * ARCHIVE_CHUNK_BYTES


class PipeFailed(Exception):
    """The other end gave up (or never came back): the message says why."""


class Pipe:
    """A bounded byte pipe between two threads. ``write`` waits while ``limit`` bytes are buffered, ``read`` while
    none are; a wait longer than ``idle_s`` fails the pipe, and so does ``fail`` from either end."""

    def __init__(self, limit: int = PIPE_BYTES, idle_s: float = ARCHIVE_IDLE_S) -> None:
        self._limit = limit
        self._idle_s = idle_s
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._failure: str | None = None
        self._changed = threading.Condition()

    def _wait(self, ready: Callable[[], bool], waiting_for: str) -> None:
        if not self._changed.wait_for(lambda: self._failure is not None or ready(), self._idle_s):
            self._failure = f"abandoned: no {waiting_for} for {self._idle_s:g}s"
            self._changed.notify_all()
        if self._failure is not None:
            raise PipeFailed(self._failure)

    def write(self, data: bytes) -> None:
        with self._changed:
            self._wait(lambda: self._size < self._limit, "reader")
            self._chunks.append(data)
            self._size += len(data)
            self._changed.notify_all()

    def close(self) -> None:
        """No more writes: the reader gets what is buffered, then end of file."""
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def fail(self, reason: str) -> None:
        with self._changed:
            if self._failure is None:
                self._failure = reason
            self._changed.notify_all()

    def read(self, size: int) -> bytes:
        """``size`` bytes, or fewer at the end (b"" after it): waits until that many are buffered or the writer
        has closed."""
        with self._changed:
            self._wait(lambda: self._eof or self._size >= size, "writer")
            out = bytearray()
            while self._chunks and len(out) < size:
                chunk = self._chunks.popleft()
                if len(out) + len(chunk) > size:
                    cut = size - len(out)
                    self._chunks.appendleft(chunk[cut:])
                    chunk = chunk[:cut]
                out += chunk
            self._size -= len(out)
            self._changed.notify_all()
            return bytes(out)

    @property
    def drained(self) -> bool:
        with self._changed:
            return self._eof and self._size == 0

    def wait_drained(self) -> None:
        """Until the reader has taken everything after ``close`` (PipeFailed if it does not come back)."""
        with self._changed:
            self._wait(lambda: self._size == 0, "reader")


def _rpc_error(exc: BaseException) -> JsonRpcError:
    if isinstance(exc, JsonRpcError):
        return exc
    if isinstance(exc, ArchiveError):
        return JsonRpcError(INVALID_PARAMS, str(exc))
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return JsonRpcError(ARCHIVE_FAILED, f"{exc.strerror or exc}{where}")
    return JsonRpcError(ARCHIVE_FAILED, str(exc) or type(exc).__name__)


class _Session:
    def __init__(self, sid: str, conn_id: int, kind: str, path: str, idle_s: float) -> None:
        self.id = sid
        self.conn_id = conn_id
        self.kind = kind  # "pack" or "unpack"
        self.path = path
        self.idle_s = idle_s
        self.pipe = Pipe(idle_s=idle_s)
        self.received = 0
        self.result: dict[str, Any] | None = None
        self.error: JsonRpcError | None = None
        self.done = threading.Event()
        self.heard = threading.Event()  # the host has had the outcome, or gave up
        self.calls = threading.Lock()  # one call of a session at a time, whatever the host sends

    def run(self, work: Callable[[], dict[str, Any]], on_end: Callable[[_Session], None]) -> None:
        try:
            self.result = work()
        except Exception as exc:
            self.error = _rpc_error(exc)
            self.pipe.fail(self.error.message)  # wakes a call waiting on the pipe, which then reports the error
            if not isinstance(exc, ArchiveError | OSError | PipeFailed):
                log.exception("archive: %s session %s failed", self.kind, self.id)
        finally:
            self.done.set()
            self.heard.wait(self.idle_s)
            on_end(self)

    def failure(self, exc: PipeFailed) -> JsonRpcError:
        """The session's own error when the pipe failed because of it, else the pipe's reason."""
        self.done.wait(1.0)
        return self.error or JsonRpcError(ARCHIVE_FAILED, str(exc))


class ArchiveSessions:
    """The archive sessions of one agent, across its MCP connections."""

    def __init__(self, idle_s: float = ARCHIVE_IDLE_S, max_sessions: int = MAX_SESSIONS) -> None:
        self._idle_s = idle_s
        self._max = max_sessions
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._handlers: dict[str, Callable[[int, dict[str, Any]], dict[str, Any]]] = {
            ARCHIVE_PACK_METHOD: self._pack,
            ARCHIVE_READ_METHOD: self._read,
            ARCHIVE_UNPACK_METHOD: self._unpack,
            ARCHIVE_WRITE_METHOD: self._write,
            ARCHIVE_FINISH_METHOD: self._finish,
            ARCHIVE_CLOSE_METHOD: self._close,
        }

    def count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def serve(self, conn: Connection, req: Request) -> None:
        """Answer one archive request (on a worker thread: a call may wait for its chunk)."""
        try:
            params = req.params if isinstance(req.params, dict) else {}
            conn.send(result_response(req.id, self.call(conn.id, req.method, params)))
        except JsonRpcError as exc:
            conn.send(error_response(req.id, exc.code, exc.message))
        except Exception as exc:
            log.exception("archive: %s failed", req.method)
            conn.send(error_response(req.id, ARCHIVE_FAILED, f"internal error: {type(exc).__name__}: {exc}"))

    def call(self, conn_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._handlers[method](conn_id, params)

    def drop(self, conn_id: int) -> None:
        """The connection ended: its sessions end too (nobody is left to read or write them)."""
        with self._lock:
            mine = [s for s in self._sessions.values() if s.conn_id == conn_id]
        for session in mine:
            self._abort(session, "the host's connection ended")

    # --- opening -----------------------------------------------------------------------------------------------

    def _start(self, conn_id: int, kind: str, path: str, work: Callable[[_Session], dict[str, Any]]) -> _Session:
        with self._lock:
            if len(self._sessions) >= self._max:
                raise JsonRpcError(INVALID_REQUEST, f"too many archive sessions open (at most {self._max})")
            session = _Session(secrets.token_hex(8), conn_id, kind, path, self._idle_s)
            self._sessions[session.id] = session
        thread = threading.Thread(
            target=session.run, args=(lambda: work(session), self._ended), name=f"archive-{session.id}", daemon=True
        )
        thread.start()
        log.info("archive: %s %s (session %s)", kind, path, session.id)
        return session

    def _ended(self, session: _Session) -> None:
        with self._lock:
            self._sessions.pop(session.id, None)
        outcome = session.error.message if session.error is not None else "done"
        log.info("archive: %s session %s ended: %s", session.kind, session.id, outcome)

    def _pack(self, conn_id: int, params: dict[str, Any]) -> dict[str, Any]:
        path = _path(params)
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise JsonRpcError(INVALID_PARAMS, f"cannot archive {path}: {exc.strerror}") from exc
        if path == "/":
            raise JsonRpcError(INVALID_PARAMS, "cannot archive / itself: name a directory below it")

        def work(session: _Session) -> dict[str, Any]:
            for piece in pack([(path, os.path.basename(path))]):
                session.pipe.write(piece)
            session.pipe.close()
            session.pipe.wait_drained()
            return {}

        session = self._start(conn_id, "pack", path, work)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else "file"
        return {"session": session.id, "type": kind}

    def _unpack(self, conn_id: int, params: dict[str, Any]) -> dict[str, Any]:
        path = _path(params)
        cp = params.get("cp", False)
        if not isinstance(cp, bool):
            raise JsonRpcError(INVALID_PARAMS, '"cp" must be a boolean')
        dest, top = cp_destination(path) if cp else (path, None)
        try:
            unpacker = Unpacker(dest, rename_top=top)
        except ArchiveError as exc:
            raise JsonRpcError(INVALID_PARAMS, str(exc)) from exc

        def work(session: _Session) -> dict[str, Any]:
            with unpacker:
                stats = unpacker.run(session.pipe)
            while session.pipe.read(ARCHIVE_CHUNK_BYTES):
                pass  # whatever follows the archive's end: the host may still be sending it
            return {"path": path, **stats.as_dict()}

        try:
            return {"session": self._start(conn_id, "unpack", path, work).id}
        except JsonRpcError:
            unpacker.close()
            raise

    # --- chunks ------------------------------------------------------------------------------------------------

    def _session(self, params: dict[str, Any], kind: str) -> _Session:
        sid = params.get("session")
        with self._lock:
            session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is None or session.kind != kind:
            raise JsonRpcError(INVALID_PARAMS, f"no {kind} session {sid!r} (finished, closed or idle too long)")
        return session

    def _read(self, _conn_id: int, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session(params, "pack")
        with session.calls:
            try:
                data = session.pipe.read(ARCHIVE_CHUNK_BYTES)
            except PipeFailed as exc:
                session.heard.set()
                raise session.failure(exc) from None
            eof = session.pipe.drained
            if eof:
                session.heard.set()
        return {"data": base64.b64encode(data).decode("ascii"), "eof": eof}

    def _write(self, _conn_id: int, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session(params, "unpack")
        offset, text = params.get("offset"), params.get("data")
        if not isinstance(text, str):
            raise JsonRpcError(INVALID_PARAMS, '"data" must be a base64 string')
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise JsonRpcError(INVALID_PARAMS, f'"data" is not valid base64: {exc}') from exc
        with session.calls:
            if offset != session.received:
                raise JsonRpcError(INVALID_PARAMS, f'"offset" must be {session.received} (the bytes received so far)')
            try:
                session.pipe.write(data)
            except PipeFailed as exc:
                session.heard.set()
                raise session.failure(exc) from None
            session.received += len(data)
            return {"received": session.received}

    def _finish(self, _conn_id: int, params: dict[str, Any]) -> dict[str, Any]:
        session = self._session(params, "unpack")
        with session.calls:
            session.pipe.close()
            finished = session.done.wait(self._idle_s)
            session.heard.set()
        if not finished:
            raise JsonRpcError(ARCHIVE_FAILED, f"unpacking into {session.path} did not finish in {self._idle_s:g}s")
        if session.error is not None:
            raise session.error
        return dict(session.result or {})

    def _close(self, _conn_id: int, params: dict[str, Any]) -> dict[str, Any]:
        sid = params.get("session")
        with self._lock:
            session = self._sessions.get(sid) if isinstance(sid, str) else None
        if session is not None:
            self._abort(session, "closed by the host")
        return {"closed": session is not None}

    @staticmethod
    def _abort(session: _Session, reason: str) -> None:
        session.pipe.fail(reason)
        session.heard.set()


def _path(params: dict[str, Any]) -> str:
    path = params.get("path")
    if not isinstance(path, str) or not path or "\0" in path:
        raise JsonRpcError(INVALID_PARAMS, '"path" must be a non-empty path without NUL bytes')
    return os.path.abspath(path)
