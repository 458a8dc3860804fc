"""SQLite repositories of drives and snapshots. Know SQL, not the rules (those are in services.workspaces)."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from nexus.domain import Conflict, Drive, DriveKind, NotFound, SavedState, Snapshot, SnapshotDrive
from nexus.store.vms import transaction


def _ts(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


class DriveRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, drive: Drive) -> None:
        try:
            self._conn.execute(
                "INSERT INTO drives (id, name, kind, size_mib, vm_id, mount_path, image, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    drive.id,
                    drive.name,
                    drive.kind.value,
                    drive.size_mib,
                    drive.vm_id,
                    drive.mount_path,
                    drive.image,
                    _ts(drive.created_at),
                ),
            )
        except sqlite3.IntegrityError as exc:
            if "drives.name" in str(exc):
                raise Conflict(f"a drive named {drive.name!r} already exists") from exc
            raise Conflict(f"drive {drive.name} conflicts with a stored one: {exc}") from exc

    def get(self, ref: str) -> Drive:
        """By exact name or id."""
        row = self._conn.execute("SELECT * FROM drives WHERE name = ? OR id = ?", (ref, ref)).fetchone()
        if row is None:
            raise NotFound(f"no drive named or with id {ref!r}")
        return self._drive(row)

    def find(self, vm_id: str | None = None) -> list[Drive]:
        """Every drive, or those attached to ``vm_id`` (root first)."""
        if vm_id is None:
            rows = self._conn.execute("SELECT * FROM drives ORDER BY name")
        else:
            rows = self._conn.execute(
                "SELECT * FROM drives WHERE vm_id = ? ORDER BY kind = 'data', created_at, id", (vm_id,)
            )
        return [self._drive(row) for row in rows]

    def attach(self, drive_id: str, vm_id: str | None, mount_path: str | None) -> None:
        self._conn.execute("UPDATE drives SET vm_id = ?, mount_path = ? WHERE id = ?", (vm_id, mount_path, drive_id))

    def set_size(self, drive_id: str, size_mib: int) -> None:
        self._conn.execute("UPDATE drives SET size_mib = ? WHERE id = ?", (size_mib, drive_id))

    def snapshot_users(self, drive_id: str) -> list[str]:
        """``vm/snapshot`` names of the snapshots holding a copy of the drive."""
        rows = self._conn.execute(
            "SELECT v.name, s.name FROM snapshot_drives d JOIN snapshots s ON s.id = d.snapshot_id"
            " JOIN vms v ON v.id = s.vm_id WHERE d.drive_id = ? ORDER BY v.name, s.name",
            (drive_id,),
        )
        return [f"{row[0]}/{row[1]}" for row in rows]

    def delete(self, drive_id: str) -> None:
        self._conn.execute("DELETE FROM drives WHERE id = ?", (drive_id,))

    @staticmethod
    def _drive(row: sqlite3.Row) -> Drive:
        return Drive(
            id=row["id"],
            name=row["name"],
            kind=DriveKind(row["kind"]),
            size_mib=row["size_mib"],
            created_at=datetime.fromisoformat(row["created_at"]),
            vm_id=row["vm_id"],
            mount_path=row["mount_path"],
            image=row["image"],
        )


class SnapshotRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, snapshot: Snapshot) -> None:
        try:
            with transaction(self._conn):
                self._conn.execute(
                    "INSERT INTO snapshots (id, vm_id, name, created_at) VALUES (?, ?, ?, ?)",
                    (snapshot.id, snapshot.vm_id, snapshot.name, _ts(snapshot.created_at)),
                )
                self._conn.executemany(
                    "INSERT INTO snapshot_drives (snapshot_id, drive_id, kind, mount_path) VALUES (?, ?, ?, ?)",
                    [(snapshot.id, d.drive_id, d.kind.value, d.mount_path) for d in snapshot.drives],
                )
                if (state := snapshot.state) is not None:
                    self._conn.execute(
                        "INSERT INTO snapshot_states (snapshot_id, vmm, accel, kernel, vcpus, mem_mib, size_bytes,"
                        " sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            snapshot.id,
                            state.vmm,
                            state.accel,
                            state.kernel,
                            state.vcpus,
                            state.mem_mib,
                            state.size_bytes,
                            state.sha256,
                        ),
                    )
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"the VM already has a snapshot named {snapshot.name!r}") from exc

    def get(self, vm_id: str, name: str) -> Snapshot:
        row = self._conn.execute("SELECT * FROM snapshots WHERE vm_id = ? AND name = ?", (vm_id, name)).fetchone()
        if row is None:
            raise NotFound(f"the VM has no snapshot named {name!r}")
        return self._snapshot(row)

    def find(self, vm_id: str) -> list[Snapshot]:
        rows = self._conn.execute("SELECT * FROM snapshots WHERE vm_id = ? ORDER BY created_at, id", (vm_id,))
        return [self._snapshot(row) for row in rows.fetchall()]

    def exists(self, snapshot_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone() is not None

    def delete(self, snapshot_id: str) -> None:
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    def _snapshot(self, row: sqlite3.Row) -> Snapshot:
        drives = self._conn.execute(
            "SELECT d.drive_id, v.name, d.kind, d.mount_path FROM snapshot_drives d JOIN drives v ON v.id = d.drive_id"
            " WHERE d.snapshot_id = ? ORDER BY d.kind = 'data', v.name",
            (row["id"],),
        )
        state = self._conn.execute(
            "SELECT vmm, accel, kernel, vcpus, mem_mib, size_bytes, sha256 FROM snapshot_states WHERE snapshot_id = ?",
            (row["id"],),
        ).fetchone()
        return Snapshot(
            id=row["id"],
            vm_id=row["vm_id"],
            name=row["name"],
            created_at=datetime.fromisoformat(row["created_at"]),
            drives=tuple(SnapshotDrive(r[0], r[1], DriveKind(r[2]), r[3]) for r in drives),
            state=SavedState(*state) if state is not None else None,
        )
