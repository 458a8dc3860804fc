"""Wiring: adapters (SQLite stores, asset sources, a VMM driver, a storage backend) into the services the API
serves."""

from __future__ import annotations

import sqlite3

from nexus.api import Services
from nexus.assets.firecracker import FirecrackerStore
from nexus.daemon.adapters import DebianKernels, RootfsImageBuilder
from nexus.domain import Layout, StorageBackend, VmmDriver
from nexus.services import (
    AssetService,
    DriveService,
    RuntimeTimeouts,
    SettingsService,
    SnapshotService,
    VmRuntime,
    VmService,
)
from nexus.services.firecracker import FirecrackerService
from nexus.services.guest import GuestService
from nexus.store import DriveRepo, ImageRepo, SettingsRepo, SnapshotRepo, VmRepo
from nexus.vmm.process import kill_orphan
from nexus.workspaces.ext4 import format_drive, grow_filesystem


def wire(
    conn: sqlite3.Connection,
    layout: Layout,
    driver: VmmDriver | None,
    driver_reason: str,
    storage: StorageBackend,
    timeouts: RuntimeTimeouts = RuntimeTimeouts(),
) -> tuple[Services, VmRuntime]:
    vm_store = VmRepo(conn)
    images, drive_store, snapshot_store = ImageRepo(conn), DriveRepo(conn), SnapshotRepo(conn)
    settings = SettingsService(SettingsRepo(conn))
    assets = AssetService(
        DebianKernels(layout.cache_dir), RootfsImageBuilder(layout.cache_dir), images, vm_store, layout, storage
    )
    runtime = VmRuntime(vm_store, timeouts)
    drives = DriveService(
        drive_store,
        snapshot_store,
        vm_store,
        images,
        storage,
        layout,
        format_drive,
        grow_filesystem,
        runtime.is_running,
    )
    vms = VmService(vm_store, settings, layout, driver, runtime, assets, drives, kill_orphan, driver_reason)
    snapshots = SnapshotService(vms, drives, vm_store, drive_store, snapshot_store, runtime, layout)
    firecracker = FirecrackerService(FirecrackerStore(layout.cache_dir), settings)
    services = Services(
        vms=vms,
        settings=settings,
        assets=assets,
        guest=GuestService(vm_store, runtime),
        firecracker=firecracker,
        drives=drives,
        snapshots=snapshots,
    )
    return services, runtime
