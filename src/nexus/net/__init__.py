"""Host networking adapters: links over netlink, the nftables table over libnftables, host DNS and firewall.

Pure parts (``ruleset``) render; the rest touches the current network namespace. The rules of addressing
(subnets, leases, TAP names, MACs) are pure domain code in ``nexus.domain.network``.
"""

from nexus.net.hostdns import host_nameservers, resolv_conf
from nexus.net.hostfw import enable_ip_forward, ip_forward_enabled, setup_host
from nexus.net.links import NetlinkLinks
from nexus.net.nft import Nft, NftError, NftFirewall

__all__ = [
    "NetlinkLinks",
    "Nft",
    "NftError",
    "NftFirewall",
    "enable_ip_forward",
    "host_nameservers",
    "ip_forward_enabled",
    "resolv_conf",
    "setup_host",
]
