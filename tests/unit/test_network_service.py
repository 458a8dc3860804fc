"""NetworkService with a real SQLite store and in-memory fakes of the links and the firewall."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from nexus.domain import (
    AgentLinks,
    Conflict,
    GuestGuard,
    Invalid,
    L4Proto,
    OwnedLink,
    PortForward,
    ProgressHandler,
    PublishedPort,
    Role,
    Unavailable,
    Vm,
    VmState,
    utcnow,
)
from nexus.domain.egress import EgressMode
from nexus.services import NetworkService, SettingsService
from nexus.store import NetRepo, SettingsRepo, VmRepo, open_database


class FakeLinks:
    def __init__(self) -> None:
        self.links: dict[str, OwnedLink] = {}
        self.bridge_addr: dict[str, IPv4Interface] = {}
        self.forgotten: list[IPv4Address] = []

    async def ensure_bridge(self, name: str, gateway: IPv4Interface) -> None:
        self.links.setdefault(name, OwnedLink(name, "bridge", "nexus"))
        self.bridge_addr[name] = gateway

    async def exists(self, name: str) -> bool:
        return name in self.links

    async def add_tap(self, name: str, bridge: str, alias: str) -> None:
        assert bridge in self.links
        self.links[name] = OwnedLink(name, "tun", alias)

    async def delete(self, name: str) -> bool:
        return self.links.pop(name, None) is not None

    async def owned(self) -> list[OwnedLink]:
        return list(self.links.values())

    async def forget_neighbour(self, bridge: str, address: IPv4Address) -> None:
        self.forgotten.append(address)


class FakeFirewall:
    def __init__(self) -> None:
        self.table: tuple[str, IPv4Network, tuple[PortForward, ...]] | None = None
        self.guests: tuple[GuestGuard, ...] = ()
        self.proxy_port: int | None = None
        self.applied = 0

    def apply(
        self,
        bridge: str,
        subnet: IPv4Network,
        forwards: Sequence[PortForward],
        guests: Sequence[GuestGuard] = (),
        proxy_port: int | None = None,
    ) -> None:
        self.table = (bridge, subnet, tuple(forwards))
        self.guests, self.proxy_port = tuple(guests), proxy_port
        self.applied += 1

    def exists(self) -> bool:
        return self.table is not None

    def remove(self) -> bool:
        existed, self.table = self.table is not None, None
        return existed


class FakeGuest:
    """The agent's side of an MCP link (a ``GuestLink``), for file_write only."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    closed = False
    close_reason = ""

    async def wait_closed(self) -> None:
        raise NotImplementedError

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError

    async def close(self, reason: str = "closed") -> None:
        raise NotImplementedError

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout_s: float | None = 30.0,
        on_progress: ProgressHandler | None = None,
    ) -> dict[str, Any]:
        assert method == "tools/call" and params is not None and params["name"] == "file_write"
        args = params["arguments"]
        self.files[args["path"]] = args["content"].encode()
        return {"content": [{"type": "text", "text": "wrote"}], "structuredContent": {"size": 1}, "isError": False}


def _bare(world: dict[str, Any], links: Any = None, firewall: Any = None, **options: Any) -> NetworkService:
    """A network service on ``world``'s store with no host DNS or setup (fresh fake links and rules unless given)."""
    return NetworkService(
        store=NetRepo(world["conn"]),
        settings=world["settings"],
        links=links or FakeLinks(),
        firewall=firewall or FakeFirewall(),
        host_dns=list,
        resolv_conf=str,
        setup_host=list,
        **options,
    )


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    conn = open_database(tmp_path / "nexus.db")
    settings = SettingsService(SettingsRepo(conn))
    links, firewall = FakeLinks(), FakeFirewall()
    said: list[str] = []

    def setup_host(bridge: str) -> list[str]:
        said.append(bridge)
        return [f"ok {bridge}"]

    net = NetworkService(
        store=NetRepo(conn),
        settings=settings,
        links=links,
        firewall=firewall,
        host_dns=lambda: ["192.0.2.53"],
        resolv_conf=lambda servers: "".join(f"nameserver {s}\n" for s in servers),
        setup_host=setup_host,
    )
    return {"conn": conn, "settings": settings, "links": links, "firewall": firewall, "net": net, "vms": VmRepo(conn)}


def add_vm(world: dict[str, Any], vm_id: str) -> str:
    now = utcnow()
    vm = Vm(vm_id, f"vm-{vm_id}", Role.WORK, 1, 256, "img", "k", VmState.CREATED, now, now)
    world["vms"].insert(vm, reason="created")
    return vm_id


def test_leases_are_unique_lowest_free_and_released_with_the_vm(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    a = net.reserve(add_vm(world, "a"), [])
    b = net.reserve(add_vm(world, "b"), [PublishedPort(8080, 80)])
    assert (str(a.address), str(b.address)) == ("10.77.0.2", "10.77.0.3")
    info = net.info("b")
    assert info is not None and info.ports == (PublishedPort(8080, 80),) and str(info.gateway) == "10.77.0.1"
    world["vms"].delete("a")  # rm: the lease goes with the row
    assert net.info("a") is None
    assert str(net.reserve(add_vm(world, "c"), []).address) == "10.77.0.2"


def test_exhaustion_is_unavailable_and_keeps_nothing(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    world["settings"].set("network_subnet", "10.9.0.0/29")  # 5 VM addresses
    for i in range(5):
        net.reserve(add_vm(world, f"v{i}"), [])
    with pytest.raises(Unavailable, match=r"no free address in 10\.9\.0\.0/29: all 5"):
        net.reserve(add_vm(world, "late"), [])
    assert net.info("late") is None


def test_a_clashing_port_keeps_no_lease(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    net.reserve(add_vm(world, "a"), [PublishedPort(8080, 80)])
    with pytest.raises(Conflict, match="published by VM vm-a"):
        net.reserve(add_vm(world, "b"), [PublishedPort(8080, 81)])
    assert net.info("b") is None
    with pytest.raises(Invalid, match="published twice"):
        net.reserve(add_vm(world, "c"), [PublishedPort(9, 1), PublishedPort(9, 2)])
    assert net.info("c") is None


def test_wants_network(world: dict[str, Any], tmp_path: Path) -> None:
    net: NetworkService = world["net"]
    assert net.wants_network(None, []) is True and net.wants_network(False, []) is False
    with pytest.raises(Invalid, match="publish needs"):
        net.wants_network(False, [PublishedPort(1, 1)])
    off = _bare(world, enabled=False)
    assert off.wants_network(None, []) is False
    with pytest.raises(Conflict, match="networking is off"):  # the daemon's setting, not a passing shortage
        off.wants_network(True, [])


def test_attach_detach_keep_links_and_rules_equal_to_what_runs(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    links: FakeLinks = world["links"]
    firewall: FakeFirewall = world["firewall"]
    lease = net.reserve(add_vm(world, "a"), [PublishedPort(8080, 80)])
    attached = asyncio.run(net.attach("a"))
    assert attached == lease
    assert links.bridge_addr["nexus0"] == IPv4Interface("10.77.0.1/24")
    assert links.links[lease.tap].alias == "nexus vm a"
    assert firewall.table is not None and firewall.table[2] == (
        PortForward(PublishedPort(8080, 80).protocol, 8080, lease.address, 80),
    )
    with pytest.raises(Conflict, match="network_subnet cannot change"):
        world["settings"].set("network_subnet", "10.8.0.0/24")
    asyncio.run(net.detach("a"))
    assert lease.tap not in links.links and not firewall.table[2]
    assert lease.address in links.forgotten
    asyncio.run(net.detach("a"))  # idempotent
    world["settings"].set("network_subnet", "10.8.0.0/24")  # nothing attached now
    again = asyncio.run(net.attach("a"))  # leased in the old subnet: a new lease in the new one
    assert str(again.address) == "10.8.0.2" and links.bridge_addr["nexus0"] == IPv4Interface("10.8.0.1/24")


def test_guest_dns(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    guest = FakeGuest()
    links = AgentLinks(control=guest, mcp=guest)
    net.reserve(add_vm(world, "a"), [])
    asyncio.run(net.configure_guest("a", links))
    assert guest.files == {}  # not attached: no NIC, nothing to write
    asyncio.run(net.attach("a"))
    asyncio.run(net.configure_guest("a", links))
    assert guest.files["/etc/resolv.conf"] == b"nameserver 192.0.2.53\n"  # from-host
    world["settings"].set("dns_servers", ["198.51.100.1", "198.51.100.2"])
    asyncio.run(net.configure_guest("a", links))
    assert guest.files["/etc/resolv.conf"] == b"nameserver 198.51.100.1\nnameserver 198.51.100.2\n"
    net.reserve(add_vm(world, "b"), [])
    asyncio.run(net.attach("b", EgressMode.PROXY))
    other = FakeGuest()
    asyncio.run(net.configure_guest("b", AgentLinks(control=other, mcp=other)))
    assert other.files == {}  # a proxy VM resolves no names: the proxy does


def test_guards_follow_attached_vms_and_their_egress(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    firewall: FakeFirewall = world["firewall"]
    a, b = net.reserve(add_vm(world, "a"), []), net.reserve(add_vm(world, "b"), [])
    asyncio.run(net.attach("a"))
    asyncio.run(net.attach("b", EgressMode.NONE))
    assert {(g.tap, g.address, g.mac, g.egress) for g in firewall.guests} == {
        (a.tap, a.address, a.mac, EgressMode.OPEN),
        (b.tap, b.address, b.mac, EgressMode.NONE),
    }
    assert net.vm_at(str(b.address)) == "b" and net.vm_at("10.77.0.250") is None
    asyncio.run(net.detach("b"))
    assert [g.tap for g in firewall.guests] == [a.tap] and net.vm_at(str(b.address)) is None


def test_restore_removes_leftover_taps_and_rebuilds_only_what_existed(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    links: FakeLinks = world["links"]
    firewall: FakeFirewall = world["firewall"]
    asyncio.run(net.restore())
    assert firewall.applied == 0 and not links.links  # never set up: nothing made at start
    links.links["nexus0"] = OwnedLink("nexus0", "bridge", "nexus")
    links.links["nxold"] = OwnedLink("nxold", "tun", "nexus vm gone")
    asyncio.run(net.restore())
    assert set(links.links) == {"nexus0"} and firewall.table == ("nexus0", IPv4Network("10.77.0.0/24"), ())


def test_cleanup_refuses_while_attached_then_removes_everything(world: dict[str, Any]) -> None:
    net: NetworkService = world["net"]
    links: FakeLinks = world["links"]
    net.reserve(add_vm(world, "a"), [])
    net.reserve(add_vm(world, "b"), [])
    asyncio.run(net.attach("a"))
    with pytest.raises(Conflict, match="stop them first"):
        asyncio.run(net.cleanup())
    asyncio.run(net.detach("a"))
    links.links["nxstray"] = OwnedLink("nxstray", "tun", "nexus vm x")
    world["settings"].set("network_subnet", "10.8.0.0/24")
    report = asyncio.run(net.cleanup())
    assert report.links == ("nxstray", "nexus0") and report.table is True and report.leases_dropped == 2
    assert not links.links and world["firewall"].table is None
    assert asyncio.run(net.setup_firewall()) == ["ok nexus0"]


class RacyLinks(FakeLinks):
    """Yields between looking for the bridge and making it, as netlink does: two unserialised starts both make it."""

    async def ensure_bridge(self, name: str, gateway: IPv4Interface) -> None:
        missing = name not in self.links
        await asyncio.sleep(0.01)
        if missing:
            if name in self.links:
                raise Conflict(f"{name} exists (netlink EEXIST)")
            self.links[name] = OwnedLink(name, "bridge", "nexus")


def test_concurrent_starts_share_one_bridge(world: dict[str, Any]) -> None:
    links = RacyLinks()
    net = _bare(world, links, FakeFirewall())
    net.reserve(add_vm(world, "a"), [])
    net.reserve(add_vm(world, "b"), [])

    async def both() -> None:
        await asyncio.gather(net.attach("a"), net.attach("b"))

    asyncio.run(both())
    assert sorted(link.kind for link in links.links.values()) == ["bridge", "tun", "tun"]


def test_restore_keeps_the_taps_and_ports_of_adopted_vms_however_often(world: dict[str, Any]) -> None:
    """After a restart the VMs still running keep their TAP and published ports; the rest go; the table is rebuilt
    once per restart with exactly their rules."""
    net: NetworkService = world["net"]
    links: FakeLinks = world["links"]
    firewall: FakeFirewall = world["firewall"]
    net.reserve(add_vm(world, "a"), [PublishedPort(8080, 80)])
    net.reserve(add_vm(world, "b"), [])
    asyncio.run(net.attach("a"))
    asyncio.run(net.attach("b"))
    taps = {lease.vm_id: lease.tap for lease in NetRepo(world["conn"]).leases()}
    for _ in range(3):  # restarts: a fresh service (nexusd's memory is gone), "a" adopted, "b" died meanwhile
        fresh = _bare(world, links, firewall)
        applied = firewall.applied
        asyncio.run(fresh.restore({"a": EgressMode.OPEN}))
        assert set(links.links) == {"nexus0", taps["a"]}
        assert firewall.applied == applied + 1
        assert firewall.table is not None
        assert firewall.table[2] == (PortForward(L4Proto.TCP, 8080, IPv4Address("10.77.0.2"), 80),)
    asyncio.run(fresh.detach("a"))  # its VMM exits later: the adopted TAP is this nexusd's to remove
    assert set(links.links) == {"nexus0"}


def test_ip_forward_is_turned_on_at_the_first_attach_unless_opted_out(world: dict[str, Any]) -> None:
    forwarding = {"on": False}

    def enable() -> bool:
        forwarding["on"] = True
        return True

    def service(enable_forwarding: Any) -> NetworkService:
        return _bare(world, forwarding_on=lambda: forwarding["on"], enable_forwarding=enable_forwarding)

    opted_out = service(None)
    opted_out.reserve(add_vm(world, "a"), [])
    assert opted_out.egress() == (False, opted_out.egress()[1])
    assert "ip_forward = false" in opted_out.egress()[1]
    asyncio.run(opted_out.attach("a"))
    assert forwarding["on"] is False
    net = service(enable)
    assert not net.egress()[0] and "turned on at the next VM start" in net.egress()[1]
    asyncio.run(net.attach("a"))
    assert forwarding["on"] is True
    assert net.egress()[0]
