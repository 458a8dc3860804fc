"""Opening the SQLite database and bringing its schema up to date.

Migrations are numbered SQL files (``migrations/NNNN_name.sql``) applied in order, each in one transaction
together with ``PRAGMA user_version = NNNN``. A migration never drops user data, and this module never deletes
the database: a file newer than this code is refused, not touched.

The connection is used from the event loop, so no statement may wait long: in WAL mode readers never wait for a
writer, and a write waits at most ``BUSY_TIMEOUT_MS`` for another process's write lock. Then, or when the disk
is full, the statement fails with ``Unavailable`` (503 at the API edge) and changes nothing; the runtime retries
its own writes with backoff.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nexus.domain import Unavailable

_MIGRATION_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
BUSY_TIMEOUT_MS = 25


def _unavailable(exc: sqlite3.OperationalError) -> Unavailable:
    what = str(exc)
    if "locked" in what or "busy" in what:
        return Unavailable("the state database is busy (another process holds its write lock); try again")
    if "full" in what:
        return Unavailable("the state database cannot be written: the disk is full; free space in the state dir")
    return Unavailable(f"the state database failed: {what}")


class GuardedConnection(sqlite3.Connection):
    """A connection whose operational failures (locked, disk full, I/O) are ``Unavailable``, raised once here."""

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        try:
            return super().executemany(sql, parameters)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every migration shipped with this code, by version; versions are 1..N with no gaps."""
    found = []
    for entry in resources.files("nexus.store").joinpath("migrations").iterdir():
        match = _MIGRATION_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations are not numbered 1..N: {[m.name for m in found]}")
    return found


def latest_version() -> int:
    return len(migrations())


def connect(path: Path | str) -> sqlite3.Connection:
    """Open the database in autocommit mode with WAL and foreign keys on. Does not migrate."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, factory=GuardedConnection)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if str(path) != ":memory:":
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Apply pending migrations up to ``target`` (default: all). Returns the resulting version."""
    shipped = migrations()
    target = len(shipped) if target is None else target
    current = schema_version(conn)
    if current > len(shipped):
        raise Unavailable(
            f"database schema version {current} is newer than this nexus understands ({len(shipped)}); "
            "upgrade nexus instead of downgrading the database"
        )
    for migration in shipped[current:target]:
        try:
            conn.executescript(f"BEGIN;\n{migration.sql}\nPRAGMA user_version = {migration.version};\nCOMMIT;")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise Unavailable(f"migration {migration.name} failed: {exc}") from exc
    return schema_version(conn)


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate the state database at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")  # at start, wait for a lock rather than fail the daemon
        migrate(conn)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except BaseException:
        conn.close()
        raise
    return conn
