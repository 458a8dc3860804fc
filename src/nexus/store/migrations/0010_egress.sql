-- Egress: how each VM may reach the outside (open: NAT as before; none; proxy: only nexusd's egress proxy), and
-- the hosts its proxy lets through. The allow-list goes with its VM.
ALTER TABLE vms ADD COLUMN egress TEXT NOT NULL DEFAULT 'open';
CREATE TABLE egress_allow (
    vm_id    TEXT NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    pattern  TEXT NOT NULL,
    PRIMARY KEY (vm_id, pattern)
);
