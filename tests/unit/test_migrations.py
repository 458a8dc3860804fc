"""Every earlier schema version, filled with rows, upgrades to the latest without losing a row."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from nexus.domain import ImageOrigin, Unavailable
from nexus.store import ImageRepo, connect, latest_version, migrate, migrations, open_database, schema_version

# Rows written at each schema version, in SQL valid at that version. When a migration is added, add the
# rows a database at the new version holds; the test below requires an entry for every version.
SEED: dict[int, list[str]] = {
    1: [
        "INSERT INTO vms VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO vm_tags VALUES ('a1b2c3d4e5f6', 'team=ml')",
        "INSERT INTO vm_state_history (vm_id, from_state, to_state, reason, at)"
        " VALUES ('a1b2c3d4e5f6', NULL, 'created', 'created', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vm_state_history (vm_id, from_state, to_state, reason, at)"
        " VALUES ('a1b2c3d4e5f6', 'created', 'starting', 'start requested', '2026-01-01T00:00:01+00:00')",
        "INSERT INTO settings VALUES ('default_vcpus', '2')",
    ],
    2: [
        "INSERT INTO vms VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'ready', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 4242, 'qemu', 'tcg')",
        "INSERT INTO vms VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00', NULL, NULL, NULL)",
        "INSERT INTO vm_tags VALUES ('0f0e0d0c0b0a', 'db')",
        "INSERT INTO vm_state_history (vm_id, from_state, to_state, reason, at)"
        " VALUES ('0f0e0d0c0b0a', NULL, 'created', 'created', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO settings VALUES ('vmm', '\"qemu\"')",
        "INSERT INTO images VALUES ('img1', 'debian-bookworm', 'debian-bookworm', '/var/lib/nexus/images/x.ext4',"
        " 1024, 'ab', 'busybox', '0.1.0', '2026-01-01T00:00:00+00:00')",
    ],
    3: [
        "INSERT INTO vms VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'ready', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 4242, 'qemu', 'tcg', 1)",
        "INSERT INTO vms VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00', NULL, NULL, NULL, 0)",
        "INSERT INTO net_leases VALUES ('a1b2c3d4e5f6', '10.77.0.2', '10.77.0.0/24', 'nx0123456789abc',"
        " '02:01:02:03:04:05', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vm_ports VALUES ('a1b2c3d4e5f6', 'tcp', 8080, 80)",
        "INSERT INTO settings VALUES ('dns_servers', '[\"192.0.2.53\"]')",
    ],
    4: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO drives VALUES ('d00000000001', 'web.root', 'root', 1024, 'a1b2c3d4e5f6', NULL,"
        " 'debian-bookworm', '2026-01-01T00:00:01+00:00')",
        "INSERT INTO drives VALUES ('d00000000002', 'data', 'data', 64, 'a1b2c3d4e5f6', '/data', NULL,"
        " '2026-01-01T00:00:02+00:00')",
        "INSERT INTO snapshots VALUES ('s00000000001', 'a1b2c3d4e5f6', 'before', '2026-01-01T00:00:03+00:00')",
        "INSERT INTO snapshot_drives VALUES ('s00000000001', 'd00000000001', 'root', NULL)",
        "INSERT INTO snapshot_drives VALUES ('s00000000001', 'd00000000002', 'data', '/data')",
    ],
    5: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at, pid, vmm,"
        " accel, pid_start, vmm_detail) VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm',"
        " 'cloud-amd64', 'ready', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 4242, 'qemu', 'tcg',"
        ' 118446, \'{"runtime_dir": "/run/nexus/vms/a1b2c3d4e5f6"}\')',
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
    ],
    6: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO agent_tokens VALUES ('0123456789ab', 'a1b2c3d4e5f6', '" + "a" * 64 + "',"
        " '2026-01-01T00:00:00+00:00', NULL, NULL)",
        "INSERT INTO agent_tokens VALUES ('ba9876543210', 'a1b2c3d4e5f6', '" + "b" * 64 + "',"
        " '2026-01-01T00:00:00+00:00', '2026-01-08T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
    ],
    7: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'portal', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at, created_by)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'work', 1, 256, 'debian-bookworm', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00', 'a1b2c3d4e5f6')",
        "INSERT INTO policies (portal, work, tools, calls_per_minute, created_at)"
        " VALUES ('name:web', 'tag:team=a', '[\"run_command\"]', 60, '2026-01-03T00:00:00+00:00')",
        "INSERT INTO policies (portal, work, tools, manage, max_vms, images, created_at)"
        " VALUES ('name:web', 'created:', '[\"*\"]', 1, 2, '[\"debian-bookworm\"]', '2026-01-03T00:00:00+00:00')",
    ],
    8: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO audit_log (at, caller, via, action, decision, target_id, target, rule, reason, args_digest,"
        " args_bytes, duration_ms, result_bytes, is_error) VALUES ('2026-01-01T00:00:00.000000+00:00', 'host',"
        " 'rest', 'POST /v1/vms/{ref}/start', 'allow', 'a1b2c3d4e5f6', 'web', NULL, '', NULL, 0, 12.5, 300, 0)",
        "INSERT INTO audit_log (at, caller, via, action, decision, target_id, target, rule, reason, args_digest,"
        " args_bytes, duration_ms, result_bytes, is_error) VALUES ('2026-01-01T00:00:01.000000+00:00',"
        " 'anonymous', 'rest', 'DELETE /v1/vms/{ref}', 'deny', NULL, 'gone', NULL, 'missing bearer token', NULL,"
        " 0, 0.1, 90, 1)",
    ],
    9: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO secrets VALUES ('ANTHROPIC_API_KEY', '2026-01-01T00:00:00.000000+00:00',"
        " '2026-01-02T00:00:00.000000+00:00', 108)",
        "INSERT INTO secret_bindings (secret, vm_id, tag, host, header, bearer, created_at) VALUES"
        " ('ANTHROPIC_API_KEY', 'a1b2c3d4e5f6', NULL, 'api.anthropic.com', 'x-api-key', 0,"
        " '2026-01-01T00:00:01.000000+00:00')",
        "INSERT INTO secret_bindings (secret, vm_id, tag, host, header, bearer, created_at) VALUES"
        " ('ANTHROPIC_API_KEY', NULL, 'team=ml', 'api.anthropic.com', 'authorization', 1,"
        " '2026-01-01T00:00:02.000000+00:00')",
    ],
    10: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at, egress)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 'proxy')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO egress_allow VALUES ('a1b2c3d4e5f6', 'api.anthropic.com')",
        "INSERT INTO egress_allow VALUES ('a1b2c3d4e5f6', '*.pypi.org:443')",
    ],
    11: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO drives VALUES ('d00000000001', 'web.root', 'root', 1024, 'a1b2c3d4e5f6', NULL,"
        " 'debian-bookworm', '2026-01-01T00:00:01+00:00')",
        "INSERT INTO snapshots VALUES ('s00000000001', 'a1b2c3d4e5f6', 'warm', '2026-01-01T00:00:03+00:00')",
        "INSERT INTO snapshot_drives VALUES ('s00000000001', 'd00000000001', 'root', NULL)",
        "INSERT INTO snapshot_states VALUES ('s00000000001', 'qemu', 'tcg', '6.1.0-1', 2, 512, 98000000,"
        " 'aa00000000000000000000000000000000000000000000000000000000000000')",
    ],
    12: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at, ttl_s,"
        " on_expiry, idle_suspend_s, suspended) VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm',"
        " 'cloud-amd64', 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 7200, 'rm', 600, 1)",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'alpine', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
    ],
    13: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'dev', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'service', 1, 256, 'web-saved', '6.1.0-1',"
        " 'created', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00')",
        "INSERT INTO images (id, name, base, path, size_mib, sha256, init_system, agent_version, built_at, packages)"
        " VALUES ('img-1', 'dev', 'debian-bookworm', 'images/dev.ext4', 1536, '" + "a" * 64 + "', 'busybox',"
        " '0.1.0', '2026-01-01T00:00:00+00:00', '[\"build-essential\", \"git\"]')",
        "INSERT INTO images (id, name, base, path, size_mib, sha256, init_system, agent_version, built_at, packages,"
        " origin_vm_id, origin_vm_name, origin_image) VALUES ('img-2', 'web-saved', 'debian-bookworm',"
        " 'images/web-saved.ext4', 1536, '" + "b" * 64 + "', 'busybox', '0.1.0', '2026-01-02T00:00:00+00:00',"
        " '[\"git\"]', 'a1b2c3d4e5f6', 'web', 'dev')",
    ],
    14: [
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at)"
        " VALUES ('a1b2c3d4e5f6', 'web', 'work', 2, 512, 'debian-bookworm', 'cloud-amd64',"
        " 'stopped', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
        "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at, pool)"
        " VALUES ('0f0e0d0c0b0a', 'db', 'work', 1, 256, 'debian-bookworm', 'cloud-amd64',"
        " 'ready', '2026-01-02T00:00:00+00:00', '2026-01-02T00:00:00+00:00', 'warm')",
        "INSERT INTO pools VALUES ('warm', 'debian-bookworm', 'cloud-amd64', 1, 256, 1, 'open', 1)",
    ],
}


def _tables(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return sorted(row[0] for row in rows)


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _tables(conn)}


def test_migrations_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert latest_version() == len(versions) >= 1


def test_every_version_has_seed_rows() -> None:
    assert set(SEED) == set(range(1, latest_version() + 1))


def test_fresh_database_reaches_latest(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "nexus.db")
    assert schema_version(conn) == latest_version()
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("version", range(1, latest_version() + 1))
def test_upgrade_from_every_version_keeps_rows(tmp_path: Path, version: int) -> None:
    path = tmp_path / "nexus.db"
    conn = connect(path)
    assert migrate(conn, target=version) == version
    for sql in SEED[version]:
        conn.execute(sql)
    before = _counts(conn)
    assert sum(before.values()) == len(SEED[version])
    conn.close()

    conn = open_database(path)  # what the daemon does at start
    assert schema_version(conn) == latest_version()
    after = _counts(conn)
    for table, count in before.items():
        assert after.get(table, 0) >= count, f"{table} lost rows upgrading from v{version}"
    names = {row[0] for row in conn.execute("SELECT name FROM vms")}
    assert {"web", "db"} <= names


def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    conn = open_database(path)
    for sql in SEED[latest_version()]:
        conn.execute(sql)
    before = _counts(conn)
    conn.close()
    assert _counts(open_database(path)) == before


def test_newer_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    conn = open_database(path)
    conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    conn.execute("INSERT INTO settings VALUES ('vmm', '\"qemu\"')")
    conn.close()
    with pytest.raises(Unavailable, match="newer than this nexus"):
        open_database(path)
    conn = connect(path)
    assert schema_version(conn) == latest_version() + 1
    assert conn.execute("SELECT value FROM settings").fetchone()[0] == '"qemu"'


def test_failed_migration_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nexus.store import db

    shipped = migrations()
    broken = [*shipped, db.Migration(len(shipped) + 1, "9999_broken.sql", "CREATE TABLE x (a);\nNOT SQL;")]
    monkeypatch.setattr(db, "migrations", lambda: broken)
    conn = connect(tmp_path / "nexus.db")
    with pytest.raises(Unavailable, match=r"9999_broken\.sql failed"):
        migrate(conn)
    assert schema_version(conn) == len(shipped)
    assert "x" not in _tables(conn)


def test_images_of_before_packages_read_as_built_without_any(tmp_path: Path) -> None:
    conn = connect(tmp_path / "nexus.db")
    migrate(conn, target=12)
    conn.execute(
        "INSERT INTO images VALUES ('img-0', 'old', 'debian-bookworm', 'images/old.ext4', 1024, '" + "a" * 64 + "',"
        " 'busybox', '0.1.0', '2026-01-01T00:00:00+00:00')"
    )
    migrate(conn)
    image = ImageRepo(conn, tmp_path).get("old")
    assert (image.packages, image.origin, image.path) == ((), None, tmp_path / "images" / "old.ext4")
    for sql in SEED[13][2:]:
        conn.execute(sql)
    saved = ImageRepo(conn, tmp_path).get("web-saved")
    assert saved.packages == ("git",)
    assert saved.origin == ImageOrigin(vm_id="a1b2c3d4e5f6", vm_name="web", image="dev")
    assert ImageRepo(conn, tmp_path).get("dev").packages == ("build-essential", "git")
