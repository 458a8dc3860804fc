"""SQLite repository of the audit log. Knows SQL, not who may read it: filters and pages as ``AuditQuery`` says."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Any

from nexus.domain.audit import AuditEntry, AuditQuery, Decision, Via

_COLUMNS = (
    "at, caller, via, action, decision, target_id, target, rule, reason, args_digest, args_bytes, duration_ms,"
    " result_bytes, is_error"
)


def _stamp(at: datetime) -> str:
    # One zone and one precision for every row: the text then sorts (and compares in SQL) as the time does.
    return at.astimezone(UTC).isoformat(timespec="microseconds")


class AuditRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, entry: AuditEntry) -> int:
        cursor = self._conn.execute(
            f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _stamp(entry.at),
                entry.caller,
                str(entry.via),
                entry.action,
                str(entry.decision),
                entry.target_id,
                entry.target,
                entry.rule,
                entry.reason,
                entry.args_digest,
                entry.args_bytes,
                entry.duration_ms,
                entry.result_bytes,
                int(entry.is_error),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def find(self, query: AuditQuery) -> list[AuditEntry]:
        where: list[str] = []
        params: list[Any] = []
        if query.vm:
            marks = ", ".join("?" * len(query.vm))
            where.append(f"(target_id IN ({marks}) OR target IN ({marks}))")
            params += [*query.vm, *query.vm]
        if query.caller is not None:
            where.append("caller = ?")
            params.append(query.caller)
        if query.since is not None:
            where.append("at >= ?")
            params.append(_stamp(query.since))
        if query.after is not None:
            where.append("id > ?")
            params.append(query.after)
            order = "ASC"
        else:
            if query.before is not None:
                where.append("id < ?")
                params.append(query.before)
            order = "DESC"
        sql = f"SELECT id, {_COLUMNS} FROM audit_log"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn.execute(f"{sql} ORDER BY id {order} LIMIT ?", (*params, query.limit))
        return [self._entry(row) for row in rows]

    def prune(self, older_than: datetime, batch: int) -> int:
        return self._conn.execute(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < ? LIMIT ?)",
            (_stamp(older_than), batch),
        ).rowcount

    @staticmethod
    def _entry(row: sqlite3.Row) -> AuditEntry:
        return AuditEntry(
            id=row["id"],
            at=datetime.fromisoformat(row["at"]),
            caller=row["caller"],
            via=Via(row["via"]),
            action=row["action"],
            decision=Decision(row["decision"]),
            target_id=row["target_id"],
            target=row["target"],
            rule=row["rule"],
            reason=row["reason"],
            args_digest=row["args_digest"],
            args_bytes=row["args_bytes"],
            duration_ms=row["duration_ms"],
            result_bytes=row["result_bytes"],
            is_error=bool(row["is_error"]),
        )
