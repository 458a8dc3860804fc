-- Secrets: metadata only. Values live in root-only files under state_dir/secrets/, never here, so a copy or dump
-- of this database carries none. A binding puts a secret in one header of requests to one host, for one VM (gone
-- with it) or every VM with a tag; a bound secret cannot be removed until its bindings are.
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL
);

CREATE TABLE secret_bindings (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    secret      TEXT NOT NULL REFERENCES secrets (name) ON DELETE RESTRICT,
    vm_id       TEXT REFERENCES vms (id) ON DELETE CASCADE,
    tag         TEXT,
    host        TEXT NOT NULL,
    header      TEXT NOT NULL,
    bearer      INTEGER NOT NULL DEFAULT 0 CHECK (bearer IN (0, 1)),
    created_at  TEXT NOT NULL,
    CHECK ((vm_id IS NULL) <> (tag IS NULL))
);
-- The same secret, for the same VM or tag, in the same header of the same host, once.
CREATE UNIQUE INDEX secret_bindings_once
    ON secret_bindings (secret, coalesce(vm_id, ''), coalesce(tag, ''), host, header);
CREATE INDEX secret_bindings_by_vm ON secret_bindings (vm_id);
CREATE INDEX secret_bindings_by_tag ON secret_bindings (tag);
