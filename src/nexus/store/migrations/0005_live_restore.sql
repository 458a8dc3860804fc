-- What a later nexusd needs to find a running VMM again (live restore): the process's start time
-- (/proc/PID/stat field 22, clock ticks since boot), so a recycled pid is never taken for the VM's VMM,
-- and the driver's own record of it (JSON: where its sockets and chroot are).
ALTER TABLE vms ADD COLUMN pid_start INTEGER;
ALTER TABLE vms ADD COLUMN vmm_detail TEXT;
