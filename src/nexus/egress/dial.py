"""The proxy's connections to the hosts VMs ask for: the host's resolver, then a guard keeping VMs off the host's
own networks (loopback, link-local, the bridge), which a proxy running on the host would otherwise open to them."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path

from nexus.egress.http import MAX_HEAD, Conn

Network = IPv4Network | IPv6Network
Lookup = Callable[[str, int], Awaitable[Sequence[str]]]  # host, port -> its addresses, as getaddrinfo gives them

# nexusd adds the bridge's subnet (the gateway is the host itself)
DEFAULT_BLOCKED: tuple[Network, ...] = tuple(
    ip_network(n)
    for n in (
        "127.0.0.0/8",
        "0.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "::/128",
        "fe80::/10",
        "100.100.100.200/32",
        "fd00:ec2::254/128",  # clouds' metadata services outside link-local (Alibaba, AWS)
    )
)


class UpstreamError(Exception):
    """The proxy could not reach the host: answered with ``status``; ``denied`` when the guard refused it."""

    def __init__(self, status: int, reason: str, *, denied: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.denied = denied


def upstream_context(cafile: Path | None = None) -> ssl.SSLContext:
    """The context for TLS to real hosts: the system's CAs (plus ``cafile``'s), hostnames checked, HTTP/1.1 only
    (the proxy relays HTTP/1.1 messages, never h2 frames)."""
    context = ssl.create_default_context()
    if cafile is not None:
        context.load_verify_locations(cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Dialer:
    lookup: Lookup
    blocked: tuple[Network, ...]
    timeout: float

    def _blocked(self, address: str) -> bool:
        ip = ip_address(address.partition("%")[0])  # a scoped IPv6 address (fe80::1%eth0)
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.blocked)

    async def open(self, host: str, port: int, *, exempt: bool, tls: ssl.SSLContext | None = None) -> Conn:
        """A connection to ``host:port`` (over ``tls``, verified for ``host``), trying its addresses in turn.
        ``exempt``: ``host`` is an address the allow-list names itself, reachable even in a blocked network."""
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    addresses = await self.lookup(host, port)
                except OSError as exc:
                    raise UpstreamError(502, f"cannot resolve {host}: {exc.strerror or exc}") from exc
                allowed = [a for a in addresses if exempt or not self._blocked(a)]
                if not allowed:
                    raise UpstreamError(
                        403,
                        f"{host} resolves to {', '.join(addresses) or 'nothing'}: the host's own networks are closed"
                        " to VMs unless the allow-list names the address and the VM asks for it by address",
                        denied=True,
                    )
                failure: OSError | None = None
                for address in allowed:
                    try:
                        reader, writer = await asyncio.open_connection(
                            address, port, ssl=tls, server_hostname=host if tls else None, limit=MAX_HEAD
                        )
                        return Conn(reader, writer)
                    except ssl.SSLCertVerificationError as exc:
                        raise UpstreamError(502, f"TLS to {host}:{port} not verified: {exc.verify_message}") from exc
                    except OSError as exc:
                        failure = exc
                assert failure is not None
                raise UpstreamError(502, f"cannot connect to {host}:{port}: {failure.strerror or failure}")
        except TimeoutError as exc:
            raise UpstreamError(504, f"connecting to {host}:{port} took over {self.timeout:g} s") from exc
