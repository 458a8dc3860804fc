"""SQLite repository of agent tokens. Knows SQL, not what a token may open: only hashes are stored here."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from nexus.domain import AgentToken, Conflict

_SELECT = (
    "SELECT t.id, t.vm_id, v.name AS vm_name, t.hash, t.created_at, t.expires_at, t.last_used"
    " FROM agent_tokens t JOIN vms v ON v.id = t.vm_id"
)


def _stamp(at: datetime | None) -> str | None:
    return at.isoformat(timespec="microseconds") if at is not None else None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


class TokenRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, token: AgentToken, secret_hash: str) -> None:
        try:
            self._conn.execute(
                "INSERT INTO agent_tokens (id, vm_id, hash, created_at, expires_at, last_used)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    token.vm_id,
                    secret_hash,
                    _stamp(token.created_at),
                    _stamp(token.expires_at),
                    _stamp(token.last_used),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"cannot store token {token.id}: {exc}") from exc

    def get(self, token_id: str) -> tuple[AgentToken, str] | None:
        row = self._conn.execute(f"{_SELECT} WHERE t.id = ?", (token_id,)).fetchone()
        return (self._token(row), str(row["hash"])) if row is not None else None

    def find(self, vm_id: str | None = None) -> list[AgentToken]:
        if vm_id is None:
            rows = self._conn.execute(f"{_SELECT} ORDER BY t.created_at, t.rowid")
        else:
            rows = self._conn.execute(f"{_SELECT} WHERE t.vm_id = ? ORDER BY t.created_at, t.rowid", (vm_id,))
        return [self._token(row) for row in rows]

    def delete(self, token_id: str) -> bool:
        return self._conn.execute("DELETE FROM agent_tokens WHERE id = ?", (token_id,)).rowcount > 0

    def touch(self, token_id: str, at: datetime) -> None:
        self._conn.execute("UPDATE agent_tokens SET last_used = ? WHERE id = ?", (_stamp(at), token_id))

    @staticmethod
    def _token(row: sqlite3.Row) -> AgentToken:
        return AgentToken(
            id=row["id"],
            vm_id=row["vm_id"],
            vm_name=row["vm_name"],
            created_at=datetime.fromisoformat(row["created_at"]),
            expires_at=_time(row["expires_at"]),
            last_used=_time(row["last_used"]),
        )
