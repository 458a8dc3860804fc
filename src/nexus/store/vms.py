"""SQLite repository of VMs, their tags and their state history. Knows SQL, not lifecycle rules."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime

from nexus.domain import (
    Conflict,
    ExpiryAction,
    Lifetime,
    NotFound,
    Role,
    StateChange,
    Vm,
    VmFilter,
    VmmRecord,
    VmState,
    utcnow,
)
from nexus.domain.egress import EgressMode, HostPattern


def _ts(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


class VmRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def insert(self, vm: Vm, reason: str) -> None:
        """Store a new VM with its tags and its first history entry, atomically."""
        try:
            with self._transaction():
                self._conn.execute(
                    "INSERT INTO vms (id, name, role, vcpus, mem_mib, image, kernel, state, created_at, updated_at,"
                    " network, created_by, egress, ttl_s, on_expiry, idle_suspend_s, pool)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        vm.id,
                        vm.name,
                        vm.role.value,
                        vm.vcpus,
                        vm.mem_mib,
                        vm.image,
                        vm.kernel,
                        vm.state.value,
                        _ts(vm.created_at),
                        _ts(vm.updated_at),
                        int(vm.network),
                        vm.created_by,
                        vm.egress.value,
                        vm.lifetime.ttl_s,
                        vm.lifetime.on_expiry.value,
                        vm.lifetime.idle_suspend_s,
                        vm.pool,
                    ),
                )
                self._conn.executemany("INSERT INTO vm_tags (vm_id, tag) VALUES (?, ?)", [(vm.id, t) for t in vm.tags])
                self._record(vm.id, None, vm.state, reason, vm.created_at)
        except sqlite3.IntegrityError as exc:
            if "vms.name" in str(exc):
                raise Conflict(f"a VM named {vm.name!r} already exists") from exc
            raise Conflict(f"VM {vm.id} conflicts with a stored one: {exc}") from exc

    def get(self, ref: str) -> Vm:
        """Find a VM by exact name, exact id, or unique id prefix."""
        row = self._conn.execute("SELECT * FROM vms WHERE name = ? OR id = ?", (ref, ref)).fetchone()
        if row is None and ref:
            escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self._conn.execute(
                "SELECT * FROM vms WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",)
            ).fetchall()
            if len(rows) > 1:
                raise Conflict(f"{ref!r} matches more than one VM id; use more characters or the name")
            row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"no VM named or with id {ref!r}")
        return self._vm(row, self._tags(row["id"]))

    def find(self, flt: VmFilter = VmFilter()) -> list[Vm]:
        sql = "SELECT * FROM vms WHERE 1 = 1" if flt.include_pool else "SELECT * FROM vms WHERE pool IS NULL"
        args: list[str] = []
        if flt.role is not None:
            sql += " AND role = ?"
            args.append(flt.role.value)
        if flt.state is not None:
            sql += " AND state = ?"
            args.append(flt.state.value)
        for tag in flt.tags:
            sql += " AND EXISTS (SELECT 1 FROM vm_tags t WHERE t.vm_id = vms.id AND t.tag = ?)"
            args.append(tag)
        rows = self._conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
        tags: dict[str, list[str]] = {}
        if rows:
            for tag_row in self._conn.execute("SELECT vm_id, tag FROM vm_tags ORDER BY tag"):
                tags.setdefault(tag_row["vm_id"], []).append(tag_row["tag"])
        return [self._vm(row, tags.get(row["id"], ())) for row in rows]

    def generation(self) -> int:
        # nexusd is the database's only writer (state-dir lock) and writes through this one connection
        return self._conn.total_changes

    def count(self) -> int:
        """Users' VMs (not the warm pools' unclaimed ones)."""
        return int(self._conn.execute("SELECT count(*) FROM vms WHERE pool IS NULL").fetchone()[0])

    def set_state(self, vm_id: str, expected: VmState, new: VmState, reason: str) -> None:
        """Move ``vm_id`` from ``expected`` to ``new`` and record why; Conflict if it was not in ``expected``."""
        at = utcnow()
        with self._transaction():
            cur = self._conn.execute(
                "UPDATE vms SET state = ?, updated_at = ? WHERE id = ? AND state = ?",
                (new.value, _ts(at), vm_id, expected.value),
            )
            if cur.rowcount != 1:
                raise Conflict(f"VM {vm_id} is no longer {expected}")
            self._record(vm_id, expected, new, reason, at)

    def set_runtime(self, vm_id: str, record: VmmRecord | None) -> None:
        """Record (or, with None, clear) the VMM process that runs the VM."""
        if record is None:
            values: tuple[object, ...] = (None, None, None, None, None)
        else:
            detail = json.dumps(dict(record.detail), sort_keys=True)
            values = (record.pid, record.driver, record.accel, record.start_time, detail)
        self._conn.execute(
            "UPDATE vms SET pid = ?, vmm = ?, accel = ?, pid_start = ?, vmm_detail = ? WHERE id = ?", (*values, vm_id)
        )

    def set_suspended(self, vm_id: str, suspended: bool) -> None:
        self._conn.execute("UPDATE vms SET suspended = ? WHERE id = ?", (int(suspended), vm_id))

    def runtime_record(self, vm_id: str) -> VmmRecord | None:
        row = self._conn.execute(
            "SELECT pid, vmm, accel, pid_start, vmm_detail FROM vms WHERE id = ?", (vm_id,)
        ).fetchone()
        if row is None or row["pid"] is None or row["pid_start"] is None or row["vmm"] is None:
            return None
        detail = json.loads(row["vmm_detail"] or "{}")
        return VmmRecord(
            pid=row["pid"],
            start_time=row["pid_start"],
            driver=row["vmm"],
            accel=row["accel"] or "",
            detail={str(k): str(v) for k, v in detail.items()},
        )

    def delete(self, vm_id: str) -> None:
        self._conn.execute("DELETE FROM vms WHERE id = ?", (vm_id,))

    def add_tags(self, vm_id: str, tags: Iterable[str]) -> None:
        with self._transaction():
            self._conn.executemany(
                "INSERT OR IGNORE INTO vm_tags (vm_id, tag) VALUES (?, ?)", [(vm_id, t) for t in tags]
            )
            self._touch(vm_id)

    def remove_tags(self, vm_id: str, tags: Iterable[str]) -> None:
        with self._transaction():
            self._conn.executemany("DELETE FROM vm_tags WHERE vm_id = ? AND tag = ?", [(vm_id, t) for t in tags])
            self._touch(vm_id)

    def history(self, vm_id: str) -> list[StateChange]:
        rows = self._conn.execute("SELECT * FROM vm_state_history WHERE vm_id = ? ORDER BY seq", (vm_id,)).fetchall()
        return [
            StateChange(
                vm_id=row["vm_id"],
                from_state=VmState(row["from_state"]) if row["from_state"] else None,
                to_state=VmState(row["to_state"]),
                reason=row["reason"],
                at=_dt(row["at"]),
            )
            for row in rows
        ]

    def _tags(self, vm_id: str) -> list[str]:
        rows = self._conn.execute("SELECT tag FROM vm_tags WHERE vm_id = ? ORDER BY tag", (vm_id,))
        return [row["tag"] for row in rows]

    def _touch(self, vm_id: str) -> None:
        self._conn.execute("UPDATE vms SET updated_at = ? WHERE id = ?", (_ts(utcnow()), vm_id))

    def _record(self, vm_id: str, src: VmState | None, dst: VmState, reason: str, at: datetime) -> None:
        self._conn.execute(
            "INSERT INTO vm_state_history (vm_id, from_state, to_state, reason, at) VALUES (?, ?, ?, ?, ?)",
            (vm_id, src.value if src else None, dst.value, reason, _ts(at)),
        )

    def set_egress(self, vm_id: str, mode: EgressMode, allow: Iterable[HostPattern]) -> None:
        """The VM's egress mode and proxy allow-list, replaced together."""
        with self._transaction():
            self._conn.execute("UPDATE vms SET egress = ? WHERE id = ?", (mode.value, vm_id))
            self._conn.execute("DELETE FROM egress_allow WHERE vm_id = ?", (vm_id,))
            self._conn.executemany(
                "INSERT INTO egress_allow (vm_id, pattern) VALUES (?, ?)", [(vm_id, str(p)) for p in allow]
            )

    def claim(self, vm_id: str, pool: str, name: str, root_drive: str, tags: Iterable[str], reason: str) -> bool:
        at = utcnow()
        try:
            with self._transaction():
                cur = self._conn.execute(
                    "UPDATE vms SET name = ?, pool = NULL, updated_at = ? WHERE id = ? AND pool = ? AND state = ?",
                    (name, _ts(at), vm_id, pool, VmState.READY.value),
                )
                if cur.rowcount != 1:
                    return False
                self._conn.execute("UPDATE drives SET name = ? WHERE vm_id = ? AND kind = 'root'", (root_drive, vm_id))
                self._conn.executemany(
                    "INSERT OR IGNORE INTO vm_tags (vm_id, tag) VALUES (?, ?)", [(vm_id, t) for t in tags]
                )
                self._record(vm_id, VmState.READY, VmState.READY, reason, at)
        except sqlite3.IntegrityError as exc:
            if "vms.name" in str(exc):
                raise Conflict(f"a VM named {name!r} already exists") from exc
            raise Conflict(f"VM {name!r} cannot be claimed: {exc}") from exc
        return True

    def allow_list(self, vm_id: str) -> tuple[HostPattern, ...]:
        rows = self._conn.execute("SELECT pattern FROM egress_allow WHERE vm_id = ? ORDER BY pattern", (vm_id,))
        return tuple(HostPattern.parse(row[0]) for row in rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    @staticmethod
    def _vm(row: sqlite3.Row, tags: Iterable[str]) -> Vm:
        return Vm(
            id=row["id"],
            name=row["name"],
            role=Role(row["role"]),
            vcpus=row["vcpus"],
            mem_mib=row["mem_mib"],
            image=row["image"],
            kernel=row["kernel"],
            state=VmState(row["state"]),
            created_at=_dt(row["created_at"]),
            updated_at=_dt(row["updated_at"]),
            tags=tuple(tags),
            pid=row["pid"],
            vmm=row["vmm"],
            accel=row["accel"],
            network=bool(row["network"]),
            created_by=row["created_by"],
            egress=EgressMode(row["egress"]),
            lifetime=Lifetime(row["ttl_s"], ExpiryAction(row["on_expiry"]), row["idle_suspend_s"]),
            suspended=bool(row["suspended"]),
            pool=row["pool"],
        )


def transaction(conn: sqlite3.Connection) -> _Transaction:
    return _Transaction(conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (the connection is in autocommit mode)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
                return
            except Exception:  # e.g. the disk filled up: never leave the transaction open behind the error
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
