-- Drives (a VM's root drive and named data drives) and snapshots of a VM's drives.
CREATE TABLE drives (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('root', 'data')),
    size_mib    INTEGER NOT NULL CHECK (size_mib > 0),
    vm_id       TEXT REFERENCES vms (id),
    mount_path  TEXT,
    image       TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX drives_by_vm ON drives (vm_id);
CREATE UNIQUE INDEX one_root_drive_per_vm ON drives (vm_id) WHERE kind = 'root';

CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    vm_id       TEXT NOT NULL REFERENCES vms (id),
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (vm_id, name)
);

CREATE TABLE snapshot_drives (
    snapshot_id  TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
    drive_id     TEXT NOT NULL REFERENCES drives (id),
    kind         TEXT NOT NULL CHECK (kind IN ('root', 'data')),
    mount_path   TEXT,
    PRIMARY KEY (snapshot_id, drive_id)
);
CREATE INDEX snapshot_drives_by_drive ON snapshot_drives (drive_id);
