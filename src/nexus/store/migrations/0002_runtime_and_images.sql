-- What runs a VM (VMM process id, driver, accelerator), and built images.
ALTER TABLE vms ADD COLUMN pid INTEGER;
ALTER TABLE vms ADD COLUMN vmm TEXT;
ALTER TABLE vms ADD COLUMN accel TEXT;

CREATE TABLE images (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    base           TEXT NOT NULL,
    path           TEXT NOT NULL,
    size_mib       INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    init_system    TEXT NOT NULL,
    agent_version  TEXT NOT NULL,
    built_at       TEXT NOT NULL
);
