"""SQLite repository of settings: JSON values keyed by name. Defaults and checks live in the domain."""

from __future__ import annotations

import json
import sqlite3

from nexus.domain import SettingValue


class SettingsRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def stored(self) -> dict[str, SettingValue]:
        """The values a user has set (keys never set are absent)."""
        rows = self._conn.execute("SELECT key, value FROM settings")
        return {row["key"]: json.loads(row["value"]) for row in rows}

    def put(self, key: str, value: SettingValue) -> None:
        self._conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )
