"""SQLite repository of address leases and published ports. Knows SQL, not allocation rules.

A leased address is UNIQUE in the table, so it is never handed out twice, whatever happens to nexusd in
between; a lease goes with its VM's row (ON DELETE CASCADE) or when the service releases it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network

from nexus.domain import Conflict, L4Proto, NetLease, PublishedPort, utcnow


class NetRepo:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def lease(self, vm_id: str) -> NetLease | None:
        row = self._conn.execute("SELECT * FROM net_leases WHERE vm_id = ?", (vm_id,)).fetchone()
        return self._lease(row) if row is not None else None

    def leases(self) -> list[NetLease]:
        return [self._lease(row) for row in self._conn.execute("SELECT * FROM net_leases ORDER BY vm_id")]

    def taken(self) -> set[str]:
        return {row[0] for row in self._conn.execute("SELECT address FROM net_leases")}

    def insert_lease(self, lease: NetLease) -> None:
        try:
            self._conn.execute(
                "INSERT INTO net_leases (vm_id, address, subnet, tap, mac, leased_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    lease.vm_id,
                    str(lease.address),
                    str(lease.subnet),
                    lease.tap,
                    lease.mac,
                    utcnow().isoformat(timespec="microseconds"),
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"address {lease.address} or TAP {lease.tap} is leased already: {exc}") from exc

    def delete_lease(self, vm_id: str) -> None:
        self._conn.execute("DELETE FROM net_leases WHERE vm_id = ?", (vm_id,))

    def ports(self, vm_id: str) -> tuple[PublishedPort, ...]:
        rows = self._conn.execute(
            "SELECT * FROM vm_ports WHERE vm_id = ? ORDER BY protocol, host_port", (vm_id,)
        ).fetchall()
        return tuple(PublishedPort(row["host_port"], row["guest_port"], L4Proto(row["protocol"])) for row in rows)

    def all_ports(self) -> dict[str, tuple[PublishedPort, ...]]:
        ports: dict[str, list[PublishedPort]] = {}
        for row in self._conn.execute("SELECT * FROM vm_ports ORDER BY vm_id, protocol, host_port"):
            port = PublishedPort(row["host_port"], row["guest_port"], L4Proto(row["protocol"]))
            ports.setdefault(row["vm_id"], []).append(port)
        return {vm_id: tuple(found) for vm_id, found in ports.items()}

    def set_ports(self, vm_id: str, ports: Sequence[PublishedPort]) -> None:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM vm_ports WHERE vm_id = ?", (vm_id,))
            for port in ports:
                owner = self._conn.execute(
                    "SELECT v.name FROM vm_ports p JOIN vms v ON v.id = p.vm_id"
                    " WHERE p.protocol = ? AND p.host_port = ?",
                    (port.protocol.value, port.host_port),
                ).fetchone()
                if owner is not None:
                    raise Conflict(f"host port {port.host_port}/{port.protocol.value} is published by VM {owner[0]}")
                self._conn.execute(
                    "INSERT INTO vm_ports (vm_id, protocol, host_port, guest_port) VALUES (?, ?, ?, ?)",
                    (vm_id, port.protocol.value, port.host_port, port.guest_port),
                )
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @staticmethod
    def _lease(row: sqlite3.Row) -> NetLease:
        return NetLease(
            vm_id=row["vm_id"],
            address=IPv4Address(row["address"]),
            subnet=IPv4Network(row["subnet"]),
            tap=row["tap"],
            mac=row["mac"],
        )
