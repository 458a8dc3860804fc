"""Network use cases: lease a VM's address at create, attach its TAP at start, detach it when the VMM exits,
keep nexusd's nftables table equal to what runs, write the guest's resolv.conf when it is ready, and clean up.

Owns the set of attached VMs (those with a TAP): the DNAT rules of published ports exist only for them, and
the bridge and subnet settings cannot change while any is attached. Bridge, TAPs and rules are made through
the ``HostLinks`` and ``Firewall`` ports; leases are kept by the ``NetStore``. It does not boot VMs or know
HTTP; the addressing rules themselves are in ``nexus.domain.network``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Network

from nexus.domain import (
    AgentLinks,
    CleanupReport,
    Conflict,
    Firewall,
    GuestGuard,
    HostLinks,
    Invalid,
    NetInfo,
    NetLease,
    NetStore,
    NexusError,
    PortForward,
    PublishedPort,
    SettingValue,
    Unavailable,
)
from nexus.domain.egress import EgressMode
from nexus.domain.network import (
    OWNER_ALIAS,
    capacity,
    check_ports,
    gateway,
    mac_address,
    parse_subnet,
    pick_address,
    tap_name,
)
from nexus.services.guest import call_tool, structured
from nexus.services.settings import SettingsService

log = logging.getLogger(__name__)

RESOLV_CONF = "/etc/resolv.conf"
PLAN_SETTINGS = ("network_bridge", "network_subnet")


class NetworkService:
    def __init__(
        self,
        *,
        store: NetStore,
        settings: SettingsService,
        links: HostLinks,
        firewall: Firewall,
        host_dns: Callable[[], list[str]],
        resolv_conf: Callable[[Sequence[str]], str],
        setup_host: Callable[[str], list[str]],
        enabled: bool = True,
        forwarding_on: Callable[[], bool] = lambda: True,
        enable_forwarding: Callable[[], bool] | None = None,
        proxy_port: int | None = None,
    ) -> None:
        """``enable_forwarding`` turns IPv4 forwarding on when the first VM needs a way out (as Docker does);
        None leaves it to the operator (nexusd.toml ``ip_forward = false``). ``proxy_port``: where nexusd's egress
        proxy listens on the gateway address (None: no proxy; ``proxy`` VMs then reach nothing)."""
        self._store = store
        self._settings = settings
        self._links = links
        self._firewall = firewall
        self._host_dns = host_dns
        self._resolv_conf = resolv_conf
        self._setup_host = setup_host
        self._enabled = enabled
        self._forwarding_on = forwarding_on
        self._enable_forwarding = enable_forwarding
        self._warned_forwarding = False
        self._proxy_port = proxy_port
        self._attached: dict[str, NetLease] = {}
        self._egress: dict[str, EgressMode] = {}  # of each attached VM
        self._links_lock = asyncio.Lock()  # one change of links and rules at a time (two starts share a bridge)
        settings.guard(PLAN_SETTINGS, self._check_plan_change)

    @property
    def enabled(self) -> bool:
        """Whether VMs get a NIC by default (nexusd's ``network`` config)."""
        return self._enabled

    def plan(self) -> tuple[str, IPv4Network]:
        """The bridge name and VM subnet from the settings."""
        return self._settings.str_value("network_bridge"), parse_subnet(self._settings.str_value("network_subnet"))

    # -- leases (at create and rm) -------------------------------------------------------------------------------

    def wants_network(self, asked: bool | None, ports: Sequence[PublishedPort]) -> bool:
        """Whether a new VM gets a NIC. Invalid when what was asked contradicts itself; Conflict when this nexusd runs
        without networking (a setting of the daemon, not something that clears up later: not Unavailable/503)."""
        if ports and asked is False:
            raise Invalid("publish needs the VM on the network: leave network unset or true")
        if (ports or asked) and not self._enabled:
            raise Conflict(
                "networking is off in this nexusd (config network = false): create the VM with network=false"
            )
        return self._enabled if asked is None else asked

    def reserve(self, vm_id: str, ports: Sequence[PublishedPort]) -> NetLease:
        """Lease an address for a new VM and record its published ports; on failure neither is kept."""
        checked = check_ports(ports)
        lease = self._lease(vm_id)
        try:
            self._store.set_ports(vm_id, checked)
        except NexusError:
            self._store.delete_lease(vm_id)
            raise
        return lease

    def _lease(self, vm_id: str) -> NetLease:
        _, subnet = self.plan()
        address = pick_address(subnet, self._store.taken())
        if address is None:
            raise Unavailable(
                f"no free address in {subnet}: all {capacity(subnet)} VM addresses are leased; remove a VM, or "
                "change network_subnet to a wider one while no networked VM runs"
            )
        lease = NetLease(vm_id, address, subnet, tap_name(vm_id), mac_address(vm_id))
        self._store.insert_lease(lease)
        log.info("vm %s: leased %s", vm_id, address)
        return lease

    def info(self, vm_id: str) -> NetInfo | None:
        lease = self._store.lease(vm_id)
        return None if lease is None else self._info(lease, self._store.ports(vm_id))

    def infos(self) -> dict[str, NetInfo]:
        """Every leased VM's network, in two queries (a VM listing asks for all of them at once)."""
        ports = self._store.all_ports()
        return {lease.vm_id: self._info(lease, ports.get(lease.vm_id, ())) for lease in self._store.leases()}

    @staticmethod
    def _info(lease: NetLease, ports: tuple[PublishedPort, ...]) -> NetInfo:
        return NetInfo(lease.address, lease.gateway, lease.subnet.prefixlen, lease.mac, lease.tap, ports)

    # -- links and rules (at start and VMM exit) -----------------------------------------------------------------

    async def attach(self, vm_id: str, egress: EgressMode = EgressMode.OPEN) -> NetLease:
        """Make sure the bridge exists, give the VM its TAP, and put its published ports and its guards (own
        addresses only, its egress) in the ruleset."""
        if not self._enabled:
            raise Conflict("networking is off in this nexusd (config network = false); this VM wants a NIC")
        async with self._links_lock:
            bridge, subnet = self.plan()
            lease = self._store.lease(vm_id)
            if lease is None or lease.subnet != subnet:  # made before networking, or network_subnet changed since
                self._store.delete_lease(vm_id)
                lease = self._lease(vm_id)
            await self._links.ensure_bridge(bridge, gateway(subnet))
            self._ensure_forwarding()
            await self._links.forget_neighbour(bridge, lease.address)
            await self._links.add_tap(lease.tap, bridge, f"{OWNER_ALIAS} vm {vm_id}")
            self._attached[vm_id] = lease
            self._egress[vm_id] = egress
            try:
                self._apply(bridge, subnet)
            except BaseException:
                await self._detach(vm_id)
                raise
        return lease

    async def detach(self, vm_id: str) -> None:
        """Remove the VM's TAP and its rules (after its VMM exited, or a start failed). Idempotent; a VM that was
        never attached by this nexusd is left alone (leftovers of an earlier one go in ``restore``)."""
        async with self._links_lock:
            await self._detach(vm_id)

    async def _detach(self, vm_id: str) -> None:
        lease = self._attached.pop(vm_id, None)
        self._egress.pop(vm_id, None)
        if lease is None:
            return
        bridge, subnet = self.plan()
        removed = await self._links.delete(lease.tap)
        await self._links.forget_neighbour(bridge, lease.address)
        if self._firewall.exists():
            self._apply(bridge, subnet)
        if removed:
            log.info("vm %s: TAP %s removed", vm_id, lease.tap)

    def _ensure_forwarding(self) -> None:
        if self._forwarding_on():
            return
        if self._enable_forwarding is not None:
            try:
                self._enable_forwarding()
            except (OSError, NexusError) as exc:
                log.warning("cannot enable IPv4 forwarding (%s): VMs reach only this host", exc)
            else:
                log.info("enabled IPv4 forwarding so VMs can reach the network (ip_forward = false: leave it off)")
                return
        if not self._warned_forwarding:
            self._warned_forwarding = True
            log.warning("IPv4 forwarding is off: VMs reach only this host; run nexusctl setup-firewall")

    def egress(self) -> tuple[bool, str]:
        """Whether networked VMs have a way out of this host, and why (for ``nexusctl status``)."""
        if not self._enabled:
            return False, "networking is off in this nexusd (config network = false)"
        if not self._forwarding_on():
            how = (
                "it is turned on at the next VM start"
                if self._enable_forwarding is not None
                else ("ip_forward = false in nexusd.toml: run nexusctl setup-firewall")
            )
            return False, f"IPv4 forwarding is off, so VMs reach only this host; {how}"
        bridge, subnet = self.plan()
        return True, f"VMs on {bridge} ({subnet}) are masqueraded out of this host"

    def _apply(self, bridge: str, subnet: IPv4Network) -> None:
        forwards = [
            PortForward(port.protocol, port.host_port, lease.address, port.guest_port)
            for vm_id, lease in self._attached.items()
            for port in self._store.ports(vm_id)
        ]
        guests = [
            GuestGuard(lease.tap, lease.address, lease.mac, self._egress.get(vm_id, EgressMode.OPEN))
            for vm_id, lease in self._attached.items()
        ]
        self._firewall.apply(bridge, subnet, forwards, guests, self._proxy_port)

    def vm_at(self, address: str) -> str | None:
        """The attached VM whose address ``address`` is (the firewall lets no VM send from another's)."""
        return next((vm_id for vm_id, lease in self._attached.items() if str(lease.address) == address), None)

    def proxy_url(self, vm_id: str) -> str | None:
        """The egress proxy as VM ``vm_id`` reaches it (on its gateway), while it is attached and there is one."""
        lease = self._attached.get(vm_id)
        if lease is None or self._proxy_port is None:
            return None
        return f"http://{lease.gateway}:{self._proxy_port}"

    async def restore(self, running: Mapping[str, EgressMode] | None = None) -> None:
        """At nexusd start: keep the TAPs of the ``running`` VMs (adopted from an earlier nexusd, with their
        egress; they count as attached again), remove every other TAP an earlier nexusd left, and rebuild the table
        once if nexus set networking up before. Idempotent however often nexusd restarts."""
        async with self._links_lock:
            await self._restore(running or {})

    async def _restore(self, running: Mapping[str, EgressMode]) -> None:
        for vm_id, egress in running.items():
            lease = self._store.lease(vm_id)
            if lease is not None:
                self._attached[vm_id] = lease
                self._egress[vm_id] = egress
        kept = {lease.tap for lease in self._attached.values()}
        for link in await self._links.owned():
            if link.kind == "tun" and link.name not in kept:
                await self._links.delete(link.name)
                log.info("removed leftover TAP %s (%s)", link.name, link.alias)
        if not self._enabled and not self._attached:
            return
        bridge, subnet = self.plan()
        if self._attached or self._firewall.exists() or await self._links.exists(bridge):
            self._apply(bridge, subnet)
        if self._attached:
            self._ensure_forwarding()

    # -- the guest -------------------------------------------------------------------------------------------

    def dns_servers(self) -> list[str]:
        value = self._settings.get("dns_servers").value
        if value == "from-host":
            return self._host_dns()
        return [str(v) for v in value] if isinstance(value, list) else []

    async def configure_guest(self, vm_id: str, links: AgentLinks) -> None:
        """Write the guest's /etc/resolv.conf through its just-opened MCP link (called as its agent becomes
        ready; VMs without NIC, and those whose egress is not open, are skipped: they resolve no names)."""
        if vm_id not in self._attached or self._egress.get(vm_id) is not EgressMode.OPEN:
            return
        servers = self.dns_servers()
        if not servers:
            log.warning("vm %s: no DNS servers to give (dns_servers is empty, or the host has none)", vm_id)
            return
        arguments = {"path": RESOLV_CONF, "content": self._resolv_conf(servers), "mode": "0644"}
        structured("file_write", await call_tool(links.mcp, "file_write", arguments))

    # -- admin -----------------------------------------------------------------------------------------------

    async def cleanup(self) -> CleanupReport:
        """Remove every TAP and bridge nexus made and its nftables table; drop leases of an older subnet."""
        async with self._links_lock:
            return await self._cleanup()

    async def _cleanup(self) -> CleanupReport:
        if self._attached:
            raise Conflict(f"{len(self._attached)} VM(s) with a network are running; stop them first")
        owned = await self._links.owned()
        removed = []
        for link in sorted(owned, key=lambda x: x.kind == "bridge"):  # ports before their bridge
            if await self._links.delete(link.name):
                removed.append(link.name)
        table = self._firewall.remove()
        _, subnet = self.plan()
        stale = [lease for lease in self._store.leases() if lease.subnet != subnet]
        for lease in stale:
            self._store.delete_lease(lease.vm_id)
        log.info("network cleaned up: links %s, table %s, %d stale leases", removed, table, len(stale))
        return CleanupReport(tuple(removed), table, len(stale))

    async def setup_firewall(self) -> list[str]:
        """Let the host forward the VMs' traffic (ip_forward, ufw/firewalld); what was done, one line each."""
        bridge, _ = self.plan()
        return await asyncio.to_thread(self._setup_host, bridge)  # may run ufw or firewall-cmd

    def _check_plan_change(self, key: str, _value: SettingValue) -> None:
        if self._attached:
            raise Conflict(f"{key} cannot change while {len(self._attached)} VM(s) with a network run; stop them first")


__all__ = ["CleanupReport", "NetworkService"]
