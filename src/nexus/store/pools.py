"""SQLite repository of warm-pool templates."""

from __future__ import annotations

import sqlite3

from nexus.domain import NotFound, PoolTemplate
from nexus.domain.egress import EgressMode


class PoolRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def put(self, template: PoolTemplate) -> None:
        """Store ``template``, replacing one of its name."""
        t = template
        self._conn.execute(
            "INSERT INTO pools (name, image, kernel, vcpus, mem_mib, network, egress, size)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET image = excluded.image,"
            " kernel = excluded.kernel, vcpus = excluded.vcpus, mem_mib = excluded.mem_mib,"
            " network = excluded.network, egress = excluded.egress, size = excluded.size",
            (t.name, t.image, t.kernel, t.vcpus, t.mem_mib, int(t.network), t.egress.value, t.size),
        )

    def get(self, name: str) -> PoolTemplate:
        row = self._conn.execute("SELECT * FROM pools WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"no pool named {name!r}")
        return self._template(row)

    def all(self) -> list[PoolTemplate]:
        return [self._template(row) for row in self._conn.execute("SELECT * FROM pools ORDER BY name")]

    def delete(self, name: str) -> None:
        self._conn.execute("DELETE FROM pools WHERE name = ?", (name,))

    @staticmethod
    def _template(row: sqlite3.Row) -> PoolTemplate:
        return PoolTemplate(
            name=row["name"],
            image=row["image"],
            kernel=row["kernel"],
            vcpus=row["vcpus"],
            mem_mib=row["mem_mib"],
            network=bool(row["network"]),
            egress=EgressMode(row["egress"]),
            size=row["size"],
        )
