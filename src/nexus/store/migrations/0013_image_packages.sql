-- Images: the Debian packages installed on top of the base (a JSON list), and for an image saved from a VM's
-- root drive, that VM (id and name, kept as text: the VM may be removed since) and the image it was made from.
ALTER TABLE images ADD COLUMN packages TEXT NOT NULL DEFAULT '[]';
ALTER TABLE images ADD COLUMN origin_vm_id TEXT;
ALTER TABLE images ADD COLUMN origin_vm_name TEXT;
ALTER TABLE images ADD COLUMN origin_image TEXT;
