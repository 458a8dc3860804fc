-- VMs, their tags, their state history, and settings.
CREATE TABLE vms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('work', 'portal', 'service')),
    vcpus       INTEGER NOT NULL CHECK (vcpus BETWEEN 1 AND 32),
    mem_mib     INTEGER NOT NULL CHECK (mem_mib BETWEEN 64 AND 65536),
    image       TEXT NOT NULL,
    kernel      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE vm_tags (
    vm_id  TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    tag    TEXT NOT NULL,
    PRIMARY KEY (vm_id, tag)
);
CREATE INDEX vm_tags_by_tag ON vm_tags (tag);

CREATE TABLE vm_state_history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX vm_state_history_by_vm ON vm_state_history (vm_id, seq);

CREATE TABLE settings (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL  -- JSON
);
