"""SQLite repository of policy rules. Knows SQL, not what a rule allows (``nexus.domain.policy`` does)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from nexus.domain.policy import Limits, Management, Rule, RuleSpec, Selector, SelectorKind

_COLUMNS = (
    "portal, work, tools, calls_per_minute, max_concurrent, max_result_bytes, manage, max_vms, images, max_vcpus,"
    " max_mem_mib, created_at"
)


def _selector(text: str) -> Selector:
    kind, _, value = text.partition(":")
    return Selector(SelectorKind(kind), value)


def _text(selector: Selector) -> str:
    return f"{selector.kind}:{selector.value}"


class PolicyRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, spec: RuleSpec, created_at: datetime) -> Rule:
        manage = spec.manage
        cursor = self._conn.execute(
            f"INSERT INTO policies ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _text(spec.portal),
                _text(spec.work),
                json.dumps(list(spec.tools)),
                spec.limits.calls_per_minute,
                spec.limits.max_concurrent,
                spec.limits.max_result_bytes,
                int(manage is not None),
                manage.max_vms if manage else None,
                json.dumps(list(manage.images) if manage else []),
                manage.max_vcpus if manage else None,
                manage.max_mem_mib if manage else None,
                created_at.isoformat(timespec="microseconds"),
            ),
        )
        assert cursor.lastrowid is not None
        return Rule(cursor.lastrowid, spec, created_at)

    def all(self) -> list[Rule]:
        return [self._rule(row) for row in self._conn.execute(f"SELECT id, {_COLUMNS} FROM policies ORDER BY id")]

    def delete(self, rule_id: int) -> bool:
        return self._conn.execute("DELETE FROM policies WHERE id = ?", (rule_id,)).rowcount > 0

    @staticmethod
    def _rule(row: sqlite3.Row) -> Rule:
        manage = None
        if row["manage"]:
            manage = Management(
                max_vms=row["max_vms"],
                images=tuple(json.loads(row["images"])),
                max_vcpus=row["max_vcpus"],
                max_mem_mib=row["max_mem_mib"],
            )
        spec = RuleSpec(
            portal=_selector(row["portal"]),
            work=_selector(row["work"]),
            tools=tuple(json.loads(row["tools"])),
            limits=Limits(row["calls_per_minute"], row["max_concurrent"], row["max_result_bytes"]),
            manage=manage,
        )
        return Rule(row["id"], spec, datetime.fromisoformat(row["created_at"]))
