"""The network as values, and the pure rules of addressing: the subnet's gateway, picking a free address, the
TAP name and MAC derived from a VM id, published ports and the guest's address argument.

Standard library only. Nothing here touches the host: links and rules are made by ``nexus.net`` adapters,
leases are kept by the store, and the use cases live in ``nexus.services.network``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from nexus.domain.egress import EgressMode
from nexus.domain.errors import Invalid

SUBNET_PREFIX_RANGE = (16, 29)  # a /29 still leaves 5 VM addresses; wider than /16 is never needed
IFNAME_MAX = 15  # IFNAMSIZ - 1
TAP_PREFIX = "nx"
OWNER_ALIAS = "nexus"  # ifalias of every link nexusd creates; how cleanup finds them, whatever their names
GUEST_ARG = "nexus.ip"  # kernel argument the initramfs applies (Debian cloud kernels lack CONFIG_IP_PNP)
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
DNS_SERVERS_MAX = 3  # the resolver reads at most 3 nameservers
_PUBLISH_RE = re.compile(r"^(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?$")


class L4Proto(StrEnum):
    TCP = "tcp"
    UDP = "udp"


def check_ifname(what: str, name: object) -> str:
    """A Linux interface name: 1-15 of letters, digits, ``_.-``."""
    if not isinstance(name, str) or not IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise Invalid(f"{what} {name!r} is not a Linux interface name: use 1-{IFNAME_MAX} of letters, digits, _ . -")
    return name


def parse_subnet(text: object) -> IPv4Network:
    """An IPv4 network in CIDR form with no host bits set, /16 to /29."""
    if not isinstance(text, str):
        raise Invalid(f"network_subnet must be a string like 10.77.0.0/24, got {text!r}")
    try:
        net = IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise Invalid(f"network_subnet {text!r} is not an IPv4 network like 10.77.0.0/24: {exc}") from exc
    low, high = SUBNET_PREFIX_RANGE
    if not low <= net.prefixlen <= high:
        raise Invalid(f"network_subnet {text!r} must be a /{low} to /{high} network")
    if not net.is_private:
        raise Invalid(f"network_subnet {text!r} is not a private range (10/8, 172.16/12, 192.168/16...)")
    return net


def parse_dns_servers(value: object) -> list[str] | str:
    """``"from-host"`` or a list of up to 3 IP addresses (the resolver reads at most 3); ``[]`` writes none."""
    if value == "from-host":
        return "from-host"
    if not isinstance(value, list) or len(value) > DNS_SERVERS_MAX:
        raise Invalid(f'dns_servers must be "from-host" or a list of at most 3 IP addresses, got {value!r}')
    servers = []
    for item in value:
        try:
            servers.append(str(ipaddress.ip_address(str(item).strip())))
        except ValueError as exc:
            raise Invalid(f"dns_servers: {item!r} is not an IP address") from exc
    return servers


def gateway(subnet: IPv4Network) -> IPv4Interface:
    """The host's address on the bridge: the subnet's first host address, with the subnet's prefix."""
    return IPv4Interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")


def vm_addresses(subnet: IPv4Network) -> Iterator[IPv4Address]:
    """Every address a VM may get, lowest first: the hosts of the subnet except the gateway."""
    gw = gateway(subnet).ip
    return (addr for addr in subnet.hosts() if addr != gw)


def capacity(subnet: IPv4Network) -> int:
    return subnet.num_addresses - 3  # network, broadcast, gateway


def pick_address(subnet: IPv4Network, taken: Collection[str]) -> IPv4Address | None:
    """The lowest VM address of ``subnet`` not in ``taken``; None when every one is taken."""
    return next((addr for addr in vm_addresses(subnet) if str(addr) not in taken), None)


def _digest(vm_id: str) -> bytes:
    return hashlib.sha256(f"nexus-net:{vm_id}".encode()).digest()


def tap_name(vm_id: str) -> str:
    """The VM's TAP device: ``nx`` + 13 hex digits of a hash of its id (15 characters, found again from the id)."""
    return TAP_PREFIX + _digest(vm_id).hex()[: IFNAME_MAX - len(TAP_PREFIX)]


def mac_address(vm_id: str) -> str:
    """The guest's MAC: locally administered unicast (``02:``) + 5 bytes of a hash of the VM id."""
    return ":".join(f"{b:02x}" for b in (0x02, *_digest(vm_id)[-5:]))


def bridge_mac(bridge: str) -> str:
    """The bridge's own MAC, fixed: a Linux bridge otherwise takes its lowest port's MAC, which changes whenever a
    VM's TAP comes or goes, and every other guest's ARP entry for the gateway then points nowhere for a while."""
    return ":".join(f"{b:02x}" for b in (0x02, *_digest(f"bridge {bridge}")[:5]))


@dataclass(frozen=True, slots=True)
class PublishedPort:
    """``HOSTPORT:GUESTPORT[/tcp|udp]``: connections to the host's port reach the VM's port."""

    host_port: int
    guest_port: int
    protocol: L4Proto = L4Proto.TCP

    def __post_init__(self) -> None:
        for what, port in (("host port", self.host_port), ("guest port", self.guest_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise Invalid(f"{what} must be 1..65535, got {port!r}")

    def __str__(self) -> str:
        return f"{self.host_port}:{self.guest_port}/{self.protocol.value}"

    @classmethod
    def parse(cls, text: str) -> PublishedPort:
        match = _PUBLISH_RE.fullmatch(text.strip())
        if not match:
            raise Invalid(f"publish wants HOSTPORT:GUESTPORT[/tcp|udp] (e.g. 8080:80), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)), L4Proto(match.group(3) or "tcp"))


def check_ports(ports: Collection[PublishedPort]) -> tuple[PublishedPort, ...]:
    """The ports sorted; Invalid when one host port (per protocol) is asked for twice."""
    seen: set[tuple[L4Proto, int]] = set()
    for port in ports:
        key = (port.protocol, port.host_port)
        if key in seen:
            raise Invalid(f"host port {port.host_port}/{port.protocol.value} is published twice")
        seen.add(key)
    return tuple(sorted(ports, key=lambda p: (p.protocol.value, p.host_port)))


@dataclass(frozen=True, slots=True)
class NetLease:
    """A VM's place on the network: its address in ``subnet`` (leased in the store), TAP name and MAC."""

    vm_id: str
    address: IPv4Address
    subnet: IPv4Network
    tap: str
    mac: str

    @property
    def gateway(self) -> IPv4Address:
        return gateway(self.subnet).ip

    @property
    def interface(self) -> IPv4Interface:
        return IPv4Interface(f"{self.address}/{self.subnet.prefixlen}")

    def kernel_arg(self) -> str:
        """``nexus.ip=ADDR/PREFIX,GATEWAY,MAC``: the initramfs configures the NIC with this MAC from it."""
        return f"{GUEST_ARG}={self.interface},{self.gateway},{self.mac}"


@dataclass(frozen=True, slots=True)
class PortForward:
    """One DNAT rule: the host's ``host_port`` to ``address:guest_port``."""

    protocol: L4Proto
    host_port: int
    address: IPv4Address
    guest_port: int


@dataclass(frozen=True, slots=True)
class GuestGuard:
    """What the firewall holds one attached VM to: only its own MAC and address on its TAP (so no VM can pass for
    another), and its egress (``none``: nothing leaves; ``proxy``: only nexusd's proxy on the gateway)."""

    tap: str
    address: IPv4Address
    mac: str
    egress: EgressMode


@dataclass(frozen=True, slots=True)
class NetInfo:
    """What ``vm inspect`` shows of a VM's network."""

    address: IPv4Address
    gateway: IPv4Address
    prefix_len: int
    mac: str
    tap: str
    ports: tuple[PublishedPort, ...]


@dataclass(frozen=True, slots=True)
class OwnedLink:
    """A link nexusd created (its ifalias starts with :data:`OWNER_ALIAS`)."""

    name: str
    kind: str  # bridge or tun
    alias: str


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What cleaning up the host's network removed."""

    links: tuple[str, ...]  # TAPs and bridges removed
    table: bool  # the nftables table was there and is gone
    leases_dropped: int  # leases outside the current subnet (a new one is taken at the VM's next start)
