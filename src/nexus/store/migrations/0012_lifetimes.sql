-- Lifetimes: a VM may expire (ttl_s after its creation it is stopped, or removed) and may be suspended when idle
-- (checkpointed and stopped until its next use). Existing VMs live as before.
ALTER TABLE vms ADD COLUMN ttl_s INTEGER;
ALTER TABLE vms ADD COLUMN on_expiry TEXT NOT NULL DEFAULT 'stop';
ALTER TABLE vms ADD COLUMN idle_suspend_s INTEGER;
ALTER TABLE vms ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;
