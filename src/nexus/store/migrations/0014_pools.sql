-- Warm pools: templates of VMs nexusd keeps booted and ready, and on each VM the pool it waits in until a matching
-- request claims it (NULL: a user's VM, as every existing one is).
CREATE TABLE pools (
    name        TEXT PRIMARY KEY,
    image       TEXT NOT NULL,
    kernel      TEXT NOT NULL,
    vcpus       INTEGER NOT NULL,
    mem_mib     INTEGER NOT NULL,
    network     INTEGER NOT NULL,
    egress      TEXT NOT NULL,
    size        INTEGER NOT NULL CHECK (size >= 0)
);
ALTER TABLE vms ADD COLUMN pool TEXT;
