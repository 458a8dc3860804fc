-- Checkpoints: a snapshot that also holds the running VM's memory and device state (saved by its VMM), with what a
-- VM must match to resume from it. The state goes with its snapshot.
CREATE TABLE snapshot_states (
    snapshot_id  TEXT PRIMARY KEY REFERENCES snapshots (id) ON DELETE CASCADE,
    vmm          TEXT NOT NULL,
    accel        TEXT NOT NULL,
    kernel       TEXT NOT NULL,
    vcpus        INTEGER NOT NULL,
    mem_mib      INTEGER NOT NULL,
    size_bytes   INTEGER NOT NULL,
    sha256       TEXT NOT NULL
);
