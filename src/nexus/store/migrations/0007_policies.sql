-- Portal routing: the operator's rules (default deny: no rule, no access), and which portal created a VM (its
-- management rights cover only those). A rule's lists are JSON arrays; NULL limits mean none.
CREATE TABLE policies (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    portal            TEXT NOT NULL,
    work              TEXT NOT NULL,
    tools             TEXT NOT NULL,
    calls_per_minute  INTEGER,
    max_concurrent    INTEGER,
    max_result_bytes  INTEGER,
    manage            INTEGER NOT NULL DEFAULT 0,
    max_vms           INTEGER,
    images            TEXT NOT NULL DEFAULT '[]',
    max_vcpus         INTEGER,
    max_mem_mib       INTEGER,
    created_at        TEXT NOT NULL
);

-- The portal VM that created this VM through its gateway (NULL: the host did). Not a foreign key: the VMs a
-- removed portal made stay, owned by nobody.
ALTER TABLE vms ADD COLUMN created_by TEXT;
CREATE INDEX vms_by_creator ON vms (created_by);
