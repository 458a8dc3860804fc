"""The host's links through netlink (pyroute2's asyncio API, no ``ip`` child process): the bridge with its
gateway address, and one persistent TAP per VM attached to it as an isolated port (IFLA_BRPORT_ISOLATED: the
bridge never forwards frames between two isolated ports, so VMs cannot talk to each other at layer 2).

Every link made here carries an ifalias starting with ``nexus`` (``OWNER_ALIAS``): that, not the name, is how
cleanup knows what is ours. Works in the caller's network namespace (the e2e tests run nexusd inside one).
A bridge of the configured name that nexus did not make is refused, never modified.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nexus.domain import Conflict, DriverError, OwnedLink
from nexus.domain.network import OWNER_ALIAS, bridge_mac


def is_owned(alias: str | None) -> bool:
    return alias is not None and (alias == OWNER_ALIAS or alias.startswith(OWNER_ALIAS + " "))


@asynccontextmanager
async def _netlink(what: str) -> AsyncIterator[AsyncIPRoute]:
    """One netlink socket for one operation; netlink errors become DriverError naming ``what``."""
    try:
        async with AsyncIPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise DriverError(f"{what}: {exc.args[1] if len(exc.args) > 1 else exc} (netlink error {exc.code})") from exc
    except PermissionError as exc:
        raise DriverError(f"{what}: {exc} (nexusd needs CAP_NET_ADMIN)") from exc


async def _index(ipr: AsyncIPRoute, name: str) -> int | None:
    found = await ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


async def _links(ipr: AsyncIPRoute) -> list[Any]:
    return [link async for link in await ipr.link("dump")]


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND")) if info is not None else ""


class NetlinkLinks:
    """The ``HostLinks`` port on netlink."""

    async def exists(self, name: str) -> bool:
        async with _netlink(f"cannot look up {name}") as ipr:
            return await _index(ipr, name) is not None

    async def ensure_bridge(self, name: str, gateway: IPv4Interface) -> None:
        async with _netlink(f"cannot set up bridge {name}") as ipr:
            index = await _index(ipr, name)
            mac = bridge_mac(name)
            if index is None:
                await ipr.link("add", ifname=name, kind="bridge", address=mac)
                index = await _index(ipr, name)
                if index is None:
                    raise DriverError(f"bridge {name} vanished right after it was made")
                await ipr.link("set", index=index, ifalias=OWNER_ALIAS)
            else:
                link = (await ipr.link("get", index=index))[0]
                if _kind(link) != "bridge" or not is_owned(link.get_attr("IFLA_IFALIAS")):
                    raise Conflict(
                        f"a link named {name} exists and nexus did not make it; choose another network_bridge"
                    )
                if link.get_attr("IFLA_ADDRESS") != mac:  # made by a nexusd before bridges had a fixed MAC
                    await ipr.link("set", index=index, address=mac)
            have = [a async for a in await ipr.addr("dump", index=index, family=2)]
            keep = False
            for addr in have:
                ip, plen = addr.get_attr("IFA_ADDRESS"), addr["prefixlen"]
                if ip == str(gateway.ip) and plen == gateway.network.prefixlen:
                    keep = True
                else:  # an earlier network_subnet's gateway
                    await ipr.addr("del", index=index, address=ip, prefixlen=plen)
            if not keep:
                await ipr.addr("add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen)
            await ipr.link("set", index=index, state="up")

    async def add_tap(self, name: str, bridge: str, alias: str) -> None:
        await self.delete(name)  # a leftover (nexusd killed mid-stop) would hold a stale port
        async with _netlink(f"cannot make TAP {name} on {bridge}") as ipr:
            master = await _index(ipr, bridge)
            if master is None:
                raise DriverError(f"cannot attach TAP {name}: bridge {bridge} does not exist")
            # persistent (outlives the file descriptor the VMM opens); NO_PI and VNET_HDR as QEMU and
            # Firecracker open it anyway
            await ipr.link("add", ifname=name, kind="tuntap", mode="tap", no_pi=True, vnet_hdr=True)
            try:
                index = await _index(ipr, name)
                if index is None:
                    raise DriverError(f"TAP {name} vanished right after it was made")
                await ipr.link("set", index=index, ifalias=alias)
                await ipr.link("set", index=index, master=master, state="up")
                await ipr.brport("set", index=index, isolated=1)
            except BaseException:
                await ipr.link("del", ifname=name)
                raise

    async def delete(self, name: str) -> bool:
        try:
            async with _netlink(f"cannot delete {name}") as ipr:
                await ipr.link("del", ifname=name)
        except DriverError as exc:
            if isinstance(exc.__cause__, NetlinkError) and exc.__cause__.code == errno.ENODEV:
                return False
            raise
        return True

    async def owned(self) -> list[OwnedLink]:
        async with _netlink("cannot list links") as ipr:
            links = await _links(ipr)
        return [
            OwnedLink(link.get_attr("IFLA_IFNAME"), _kind(link), link.get_attr("IFLA_IFALIAS"))
            for link in links
            if is_owned(link.get_attr("IFLA_IFALIAS"))
        ]

    async def forget_neighbour(self, bridge: str, address: IPv4Address) -> None:
        try:
            async with _netlink(f"cannot drop the neighbour entry of {address}") as ipr:
                index = await _index(ipr, bridge)
                if index is not None:
                    await ipr.neigh("del", dst=str(address), ifindex=index)
        except DriverError as exc:
            if not (isinstance(exc.__cause__, NetlinkError) and exc.__cause__.code in (errno.ENOENT, errno.ENODEV)):
                raise
