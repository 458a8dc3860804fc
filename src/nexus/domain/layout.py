"""Where Nexus keeps things on disk: one value object, so no path is spelled twice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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

    def root_drive(self, vm_id: str) -> Path:
        """The VM's own copy-on-write copy of its image, made at its first start."""
        return self.vm_dir(vm_id) / "root.img"
