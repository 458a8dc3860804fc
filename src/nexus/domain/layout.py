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

    def vm_dir(self, vm_id: str) -> Path:
        """Persistent files of one VM (console log, drives)."""
        return self.state_dir / "vms" / vm_id

    def vm_runtime_dir(self, vm_id: str) -> Path:
        """Sockets and pid file of one running VM; short, since Unix socket paths are limited to 107 bytes."""
        return self.runtime_dir / "vms" / vm_id

    def console_log(self, vm_id: str) -> Path:
        return self.vm_dir(vm_id) / "console.log"
