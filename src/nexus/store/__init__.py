"""State in SQLite: connection, numbered migrations, repositories."""

from nexus.store.db import connect, latest_version, migrate, migrations, open_database, schema_version
from nexus.store.settings import SettingsRepo
from nexus.store.vms import VmRepo, now

__all__ = [
    "SettingsRepo",
    "VmRepo",
    "connect",
    "latest_version",
    "migrate",
    "migrations",
    "now",
    "open_database",
    "schema_version",
]
