"""Wiring: adapters (SQLite stores, asset sources, a VMM driver) into the services the API serves."""

from __future__ import annotations

import sqlite3

from nexus.api import Services
from nexus.assets.firecracker import FirecrackerStore
from nexus.daemon.adapters import DebianKernels, RootfsImageBuilder
from nexus.domain import Layout, VmmDriver
from nexus.net import NetlinkLinks, NftFirewall, host_nameservers, ip_forward_enabled, resolv_conf, setup_host
from nexus.services import AssetService, NetworkService, RuntimeTimeouts, SettingsService, VmRuntime, VmService
from nexus.services.firecracker import FirecrackerService
from nexus.services.guest import GuestService
from nexus.store import ImageRepo, NetRepo, SettingsRepo, VmRepo
from nexus.vmm.process import kill_orphan
from nexus.workspaces import clone_file


def wire(
    conn: sqlite3.Connection,
    layout: Layout,
    driver: VmmDriver | None,
    driver_reason: str,
    timeouts: RuntimeTimeouts = RuntimeTimeouts(),
    network: bool = True,
) -> tuple[Services, VmRuntime]:
    vm_store = VmRepo(conn)
    settings = SettingsService(SettingsRepo(conn))
    assets = AssetService(
        DebianKernels(layout.cache_dir), RootfsImageBuilder(layout.cache_dir), ImageRepo(conn), vm_store, layout
    )
    net = NetworkService(
        NetRepo(conn),
        settings,
        NetlinkLinks(),
        NftFirewall(),
        host_nameservers,
        resolv_conf,
        setup_host,
        network,
        ip_forward_enabled,
    )

    async def on_ready(vm_id: str) -> None:
        await net.configure_guest(vm_id, guest)

    runtime = VmRuntime(vm_store, timeouts, on_ready=on_ready, on_exit=net.detach)
    guest = GuestService(vm_store, runtime)
    vms = VmService(vm_store, settings, layout, driver, runtime, assets, clone_file, kill_orphan, net, driver_reason)
    firecracker = FirecrackerService(FirecrackerStore(layout.cache_dir), settings)
    services = Services(vms=vms, settings=settings, assets=assets, guest=guest, firecracker=firecracker, network=net)
    return services, runtime
