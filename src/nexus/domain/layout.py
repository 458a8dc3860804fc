"""Where Nexus keeps things on disk: one value object, so no path is spelled twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DRIVE_FILE = "disk.img"


@dataclass(frozen=True, slots=True)
class Layout:
    state_dir: Path  # persistent: database, per-VM files, caches
    runtime_dir: Path  # volatile: sockets, pid files

    @property
    def database(self) -> Path:
        return self.state_dir / "nexus.db"

    @property
    def cache_dir(self) -> Path:
        """Downloaded and derived assets (kernels with their initramfs, base rootfs tarballs)."""
        return self.state_dir / "cache"

    @property
    def secrets_dir(self) -> Path:
        """Secret values, one root-only file each: outside the database, so its backups never carry them."""
        return self.state_dir / "secrets"

    @property
    def egress_ca_dir(self) -> Path:
        """The Nexus egress CA (key and certificate, root-only): made at first start, trusted by proxied guests."""
        return self.state_dir / "egress-ca"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    def vm_dir(self, vm_id: str) -> Path:
        """Persistent files of one VM (console log, drives)."""
        return self.state_dir / "vms" / vm_id

    def vm_runtime_dir(self, vm_id: str) -> Path:
        """Sockets and pid file of one running VM; short, since Unix socket paths are limited to 107 bytes."""
        return self.runtime_dir / "vms" / vm_id

    def console_log(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "console.log"

    def legacy_root_drive(self, vm_id: str) -> Path:
        """Where a VM's root drive lived before drives had volumes of their own (adopted at its next start)."""
        return self.vm_dir(vm_id) / "root.img"

    @property
    def drives_dir(self) -> Path:
        return self.state_dir / "drives"

    def drive_volume(self, drive_id: str) -> Path:
        """One drive's volume: a btrfs subvolume (or a plain directory) holding only its disk file."""
        return self.drives_dir / drive_id

    def drive_file(self, drive_id: str) -> Path:
        return self.drive_volume(drive_id) / DRIVE_FILE

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"

    def snapshot_dir(self, snapshot_id: str) -> Path:
        """A plain directory with one read-only volume per drive of the snapshot."""
        return self.snapshots_dir / snapshot_id

    def snapshot_state_dir(self, snapshot_id: str) -> Path:
        """A checkpoint's VMM state (the driver's own files), beside the snapshot's volumes."""
        return self.snapshot_dir(snapshot_id) / "vmm"

    def snapshot_volume(self, snapshot_id: str, drive_id: str) -> Path:
        return self.snapshot_dir(snapshot_id) / drive_id
