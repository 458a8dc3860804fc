"""State in SQLite: connection, numbered migrations, repositories."""

from nexus.store.audit import AuditRepo
from nexus.store.db import connect, latest_version, migrate, migrations, open_database, schema_version
from nexus.store.drives import DriveRepo, SnapshotRepo
from nexus.store.images import ImageRepo
from nexus.store.network import NetRepo
from nexus.store.policies import PolicyRepo
from nexus.store.pools import PoolRepo
from nexus.store.secrets import SecretRepo
from nexus.store.settings import SettingsRepo
from nexus.store.tokens import TokenRepo
from nexus.store.vault import SecretFiles
from nexus.store.vms import VmRepo

__all__ = [
    "AuditRepo",
    "DriveRepo",
    "ImageRepo",
    "NetRepo",
    "PolicyRepo",
    "PoolRepo",
    "SecretFiles",
    "SecretRepo",
    "SettingsRepo",
    "SnapshotRepo",
    "TokenRepo",
    "VmRepo",
    "connect",
    "latest_version",
    "migrate",
    "migrations",
    "open_database",
    "schema_version",
]
