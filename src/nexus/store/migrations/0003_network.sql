-- Networking: whether a VM has a NIC, its address lease, and its published ports. Existing VMs get a NIC
-- (and an address at their next start), as every new VM does by default.
ALTER TABLE vms ADD COLUMN network INTEGER NOT NULL DEFAULT 1 CHECK (network IN (0, 1));

CREATE TABLE net_leases (
    vm_id      TEXT PRIMARY KEY REFERENCES vms (id) ON DELETE CASCADE,
    address    TEXT NOT NULL UNIQUE,
    subnet     TEXT NOT NULL,
    tap        TEXT NOT NULL UNIQUE,
    mac        TEXT NOT NULL,
    leased_at  TEXT NOT NULL
);

CREATE TABLE vm_ports (
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    protocol    TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    host_port   INTEGER NOT NULL CHECK (host_port BETWEEN 1 AND 65535),
    guest_port  INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
    PRIMARY KEY (protocol, host_port)
);
CREATE INDEX vm_ports_by_vm ON vm_ports (vm_id);
