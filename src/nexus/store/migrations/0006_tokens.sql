-- Agent tokens: each opens one VM's MCP endpoint over TCP and nothing else. Only the sha256 of the secret is
-- kept (the secret is shown once, when the token is made); a token goes with its VM's row.
CREATE TABLE agent_tokens (
    id          TEXT PRIMARY KEY,
    vm_id       TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    hash        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    last_used   TEXT
);
CREATE INDEX agent_tokens_by_vm ON agent_tokens (vm_id);
