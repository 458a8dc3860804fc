"""SQLite repository of secrets' metadata and bindings. Knows SQL, never a value (``store.vault`` keeps those)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime

from nexus.domain import Conflict
from nexus.domain.egress import Binding
from nexus.domain.secrets import BindingRecord, BindingSpec, SecretMeta
from nexus.store.vms import transaction

_BINDINGS = (
    "SELECT b.id, b.secret, b.vm_id, v.name AS vm_name, b.tag, b.host, b.header, b.bearer, b.created_at"
    " FROM secret_bindings b LEFT JOIN vms v ON v.id = b.vm_id"
)


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def _binding(row: sqlite3.Row) -> Binding:
    return Binding(
        id=row["id"],
        secret=row["secret"],
        host=row["host"],
        header=row["header"],
        bearer=bool(row["bearer"]),
        vm_id=row["vm_id"],
        tag=row["tag"],
    )


def _record(row: sqlite3.Row) -> BindingRecord:
    return BindingRecord(_binding(row), datetime.fromisoformat(row["created_at"]), row["vm_name"])


def _meta(row: sqlite3.Row) -> SecretMeta:
    return SecretMeta(
        name=row["name"],
        size_bytes=row["size_bytes"],
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


class SecretRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def put(self, name: str, size_bytes: int, at: datetime) -> SecretMeta:
        row = self._conn.execute(
            "INSERT INTO secrets (name, created_at, updated_at, size_bytes) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at, size_bytes = excluded.size_bytes"
            " RETURNING name, created_at, updated_at, size_bytes",
            (name, _stamp(at), _stamp(at), size_bytes),
        ).fetchone()
        return _meta(row)

    def get(self, name: str) -> SecretMeta | None:
        row = self._conn.execute("SELECT * FROM secrets WHERE name = ?", (name,)).fetchone()
        return _meta(row) if row is not None else None

    def all(self) -> list[SecretMeta]:
        return [_meta(row) for row in self._conn.execute("SELECT * FROM secrets ORDER BY name")]

    def delete(self, name: str, with_bindings: bool) -> bool:
        with transaction(self._conn):
            if with_bindings:
                self._conn.execute("DELETE FROM secret_bindings WHERE secret = ?", (name,))
            try:
                return self._conn.execute("DELETE FROM secrets WHERE name = ?", (name,)).rowcount > 0
            except sqlite3.IntegrityError as exc:  # ON DELETE RESTRICT: bound since the service looked
                raise Conflict(f"secret {name} is bound: unbind it first, or force") from exc

    def bind(self, spec: BindingSpec, at: datetime) -> BindingRecord:
        try:
            cursor = self._conn.execute(
                "INSERT INTO secret_bindings (secret, vm_id, tag, host, header, bearer, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (spec.secret, spec.vm_id, spec.tag, spec.host, spec.header, int(spec.bearer), _stamp(at)),
            )
        except sqlite3.IntegrityError as exc:
            raise Conflict(
                f"secret {spec.secret} is already bound to header {spec.header} of {spec.host} for that"
                f" {'VM' if spec.vm_id else 'tag'}"
            ) from exc
        row = self._conn.execute(f"{_BINDINGS} WHERE b.id = ?", (cursor.lastrowid,)).fetchone()
        return _record(row)

    def unbind(self, binding_id: int) -> bool:
        return self._conn.execute("DELETE FROM secret_bindings WHERE id = ?", (binding_id,)).rowcount > 0

    def bindings(self, secret: str | None = None) -> list[BindingRecord]:
        if secret is None:
            rows = self._conn.execute(f"{_BINDINGS} ORDER BY b.id")
        else:
            rows = self._conn.execute(f"{_BINDINGS} WHERE b.secret = ? ORDER BY b.id", (secret,))
        return [_record(row) for row in rows]

    def bindings_matching(self, vm_id: str, tags: Iterable[str]) -> list[Binding]:
        tags = list(tags)
        marks = ", ".join("?" * len(tags))
        rows = self._conn.execute(f"{_BINDINGS} WHERE b.vm_id = ? OR b.tag IN ({marks}) ORDER BY b.id", (vm_id, *tags))
        return [_binding(row) for row in rows]
