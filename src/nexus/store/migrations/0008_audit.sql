-- The audit log: one row per routed call and per management action. Argument contents are never stored, only the
-- sha256 of their canonical JSON and their size. Rows do not reference vms: a removed VM's history stays, with the
-- name it had. Ids only grow (AUTOINCREMENT: never reused after pruning), so an id is a stable paging cursor and a
-- live reader's Last-Event-ID.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    caller        TEXT NOT NULL,
    via           TEXT NOT NULL,
    action        TEXT NOT NULL,
    decision      TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
    target_id     TEXT,
    target        TEXT,
    rule          INTEGER,
    reason        TEXT NOT NULL,
    args_digest   TEXT,
    args_bytes    INTEGER NOT NULL,
    duration_ms   REAL NOT NULL,
    result_bytes  INTEGER NOT NULL,
    is_error      INTEGER NOT NULL CHECK (is_error IN (0, 1))
);
CREATE INDEX audit_log_by_time ON audit_log (at);
CREATE INDEX audit_log_by_target ON audit_log (target_id);
