"""Wiring: adapters (SQLite stores, asset sources, a VMM driver) into the services the API serves."""

from __future__ import annotations

import sqlite3

from nexus.api import Services
from nexus.assets.firecracker import FirecrackerStore
from nexus.daemon.adapters import DebianKernels, RootfsImageBuilder
from nexus.domain import Layout, VmmDriver
from nexus.services import AssetService, RuntimeTimeouts, SettingsService, VmRuntime, VmService
from nexus.services.firecracker import FirecrackerService
from nexus.services.guest import GuestService
from nexus.store import ImageRepo, SettingsRepo, VmRepo
from nexus.vmm.process import kill_orphan
from nexus.workspaces import clone_file


def wire(
    conn: sqlite3.Connection,
    layout: Layout,
    driver: VmmDriver | None,
    driver_reason: str,
    timeouts: RuntimeTimeouts = RuntimeTimeouts(),
) -> tuple[Services, VmRuntime]:
    vm_store = VmRepo(conn)
    settings = SettingsService(SettingsRepo(conn))
    assets = AssetService(
        DebianKernels(layout.cache_dir), RootfsImageBuilder(layout.cache_dir), ImageRepo(conn), vm_store, layout
    )
    runtime = VmRuntime(vm_store, timeouts)
    vms = VmService(vm_store, settings, layout, driver, runtime, assets, clone_file, kill_orphan, driver_reason)
    firecracker = FirecrackerService(FirecrackerStore(layout.cache_dir), settings)
    services = Services(
        vms=vms, settings=settings, assets=assets, guest=GuestService(vm_store, runtime), firecracker=firecracker
    )
    return services, runtime
