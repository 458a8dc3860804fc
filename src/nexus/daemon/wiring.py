"""Wiring: adapters (SQLite stores, asset sources, a VMM driver, a storage backend) into the services the API
serves."""

from __future__ import annotations

import sqlite3

from nexus.api import Services
from nexus.assets.firecracker import FirecrackerStore
from nexus.channel import open_link
from nexus.daemon.adapters import DebianKernels, RootfsImageBuilder
from nexus.daemon.config import Config
from nexus.daemon.drivers import choose_driver
from nexus.domain import AgentLinks, Layout, StorageBackend, VmmDriver
from nexus.egress import NexusCA, upstream_context
from nexus.mcp.gateway import GatewayServer
from nexus.net import (
    NetlinkLinks,
    NftFirewall,
    enable_ip_forward,
    host_nameservers,
    ip_forward_enabled,
    resolv_conf,
    setup_host,
)
from nexus.services import (
    AssetService,
    DriveService,
    NetworkService,
    SettingsService,
    SnapshotService,
    VmRuntime,
    VmService,
)
from nexus.services.audit import AuditService
from nexus.services.checkpoints import CheckpointService
from nexus.services.egress import EgressService
from nexus.services.firecracker import FirecrackerService
from nexus.services.guest import GuestService
from nexus.services.identity import IdentityService
from nexus.services.lifetimes import LifetimeService
from nexus.services.locks import VmLocks
from nexus.services.policy import PolicyService
from nexus.services.pools import PoolService
from nexus.services.secrets import SecretService
from nexus.services.tokens import TokenService
from nexus.store import (
    AuditRepo,
    DriveRepo,
    ImageRepo,
    NetRepo,
    PolicyRepo,
    PoolRepo,
    SecretFiles,
    SecretRepo,
    SettingsRepo,
    SnapshotRepo,
    TokenRepo,
    VmRepo,
)
from nexus.vmm.firecracker.driver import FirecrackerDriver
from nexus.vmm.process import kill_orphan
from nexus.vmm.qemu.driver import QemuDriver
from nexus.workspaces.ext4 import format_drive, grow_filesystem


def wire(
    conn: sqlite3.Connection,
    layout: Layout,
    driver: VmmDriver | None,
    driver_reason: str,
    storage: StorageBackend,
    config: Config = Config(),
) -> tuple[Services, VmRuntime]:
    vm_store = VmRepo(conn)
    proxy_port = config.egress_proxy_port or None
    images, drive_store, snapshot_store = ImageRepo(conn, layout.state_dir), DriveRepo(conn), SnapshotRepo(conn)
    settings = SettingsService(SettingsRepo(conn))
    locks = VmLocks()  # one per VM, shared by every service that touches a VM's process or drives
    assets = AssetService(
        kernels=DebianKernels(layout.cache_dir),
        builder=RootfsImageBuilder(layout.cache_dir),
        images=images,
        vms=vm_store,
        layout=layout,
        storage=storage,
        drives=drive_store,
        locks=locks,
    )
    net = NetworkService(
        store=NetRepo(conn),
        settings=settings,
        links=NetlinkLinks(),
        firewall=NftFirewall(),
        host_dns=host_nameservers,
        resolv_conf=resolv_conf,
        setup_host=setup_host,
        enabled=config.network,
        forwarding_on=ip_forward_enabled,
        enable_forwarding=enable_ip_forward if config.ip_forward else None,
        proxy_port=proxy_port,
    )
    audit = AuditService(store=AuditRepo(conn), vms=vm_store, settings=settings)
    secrets = SecretService(SecretRepo(conn), SecretFiles(layout.secrets_dir), vm_store)
    egress = EgressService(
        vms=vm_store,
        network=net,
        secrets=secrets,
        ca=NexusCA.load_or_create(layout.egress_ca_dir),
        upstream_ssl=upstream_context(config.egress_ca_file),
        audit=audit,
        port=proxy_port,
    )

    identity = IdentityService(vm_store, net.info)

    async def on_ready(vm_id: str, links: AgentLinks) -> None:  # egress first: it is what the guest must know
        await egress.configure_guest(vm_id, links)
        await net.configure_guest(vm_id, links)
        await identity.configure_guest(vm_id, links)  # last: an agent from before it refuses it

    runtime = VmRuntime(vm_store, connect=open_link, timeouts=config.timeouts, on_ready=on_ready, on_exit=net.detach)
    guest = GuestService(vm_store, runtime)
    drives = DriveService(
        drives=drive_store,
        snapshots=snapshot_store,
        vms=vm_store,
        images=images,
        backend=storage,
        layout=layout,
        format_drive=format_drive,
        grow_filesystem=grow_filesystem,
        is_running=runtime.is_running,
        locks=locks,
    )
    vms = VmService(
        repo=vm_store,
        settings=settings,
        layout=layout,
        driver=driver,
        runtime=runtime,
        assets=assets,
        drives=drives,
        kill_orphan=kill_orphan,
        network=net,
        no_driver_reason=driver_reason,
        adopters=adopters(layout, config),
        locks=locks,
        proxy=egress.listen,
    )
    snapshots = SnapshotService(
        vms=vms,
        drives=drives,
        vm_store=vm_store,
        drive_store=drive_store,
        snapshots=snapshot_store,
        runtime=runtime,
        layout=layout,
        locks=locks,
    )
    settings.watch(
        ("vmm",),
        lambda _key, vmm: vms.use_driver(*choose_driver(str(vmm), layout, config.firecracker_binary, config.jailer())),
    )
    checkpoints = CheckpointService(
        vms=vms,
        snapshots=snapshots,
        drives=drives,
        drive_store=drive_store,
        vm_store=vm_store,
        snapshot_store=snapshot_store,
        runtime=runtime,
        layout=layout,
        locks=locks,
    )
    lifetimes = LifetimeService(vms=vms, checkpoints=checkpoints, snapshots=snapshots, vm_store=vm_store)
    pools = PoolService(
        store=PoolRepo(conn), vms=vms, vm_store=vm_store, runtime=runtime, identity=identity, locks=locks
    )
    guest.report_use(lifetimes)
    vms.resume_suspended_with(lifetimes.wake)
    firecracker = FirecrackerService(FirecrackerStore(layout.cache_dir), settings)
    policy = PolicyService(PolicyRepo(conn), vm_store)
    gateway = GatewayServer(vms=vms, guest=guest, policy=policy, network=net, snapshots=snapshots, audit=audit)
    runtime.serve_gateways(gateway)
    services = Services(
        vms=vms,
        settings=settings,
        assets=assets,
        guest=guest,
        firecracker=firecracker,
        network=net,
        drives=drives,
        snapshots=snapshots,
        checkpoints=checkpoints,
        lifetimes=lifetimes,
        pools=pools,
        tokens=TokenService(TokenRepo(conn), vm_store),
        policy=policy,
        audit=audit,
        secrets=secrets,
        egress=egress,
    )
    return services, runtime


def adopters(layout: Layout, config: Config) -> dict[str, VmmDriver]:
    """A driver of each kind for VMMs an earlier nexusd left running, whatever this one launches with: adoption
    reads everything it needs from the VMM's record, never from the binary or the accelerator probe."""
    firecracker = FirecrackerDriver(str(config.firecracker_binary or "firecracker"), "adoption", config.jailer())
    qemu = QemuDriver(layout.cache_dir / "accel.json", tsc_khz=None)
    return {qemu.name: qemu, firecracker.name: firecracker}
