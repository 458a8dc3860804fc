"""The host's nameservers (for ``dns_servers = "from-host"``) and the guest's resolv.conf text.

Loopback resolvers (systemd-resolved's 127.0.0.53 stub, a local dnsmasq) cannot be reached from a guest, so they
are skipped; when that leaves none, systemd-resolved's list of upstream servers is read instead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAMS = Path("/run/systemd/resolve/resolv.conf")
MAX_SERVERS = 3  # the resolver reads no more


def nameservers(text: str) -> list[str]:
    """The non-loopback ``nameserver`` addresses of a resolv.conf, in order, without duplicates."""
    found: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue
            if not addr.is_loopback and str(addr) not in found:
                found.append(str(addr))
    return found[:MAX_SERVERS]


def host_nameservers(files: Sequence[Path] = (HOST_RESOLV_CONF, RESOLVED_UPSTREAMS)) -> list[str]:
    """The first of ``files`` that names a usable nameserver gives the list; [] when none does."""
    for path in files:
        try:
            servers = nameservers(path.read_text(errors="replace"))
        except OSError:
            continue
        if servers:
            return servers
    return []


def resolv_conf(servers: Sequence[str]) -> str:
    return "# written by nexus when the VM became ready (setting dns_servers)\n" + "".join(
        f"nameserver {server}\n" for server in servers
    )
