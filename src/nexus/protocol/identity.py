"""``nexus/identity`` (control port, host → agent): who the guest is and what time it is, sent each time a VM becomes
ready. A booted guest learns little from it (its clock came from the RTC); a guest resumed from a checkpoint learns
that time moved on while it was saved, and a fork that it is another machine now.

params: ``{"hostname": str, "epoch": float, "machine_id": str (32 hex) | null, "seed": str (hex) | null,
"net": {"mac": str, "address": "A.B.C.D/P", "gateway": "A.B.C.D"} | null}``; result: what changed,
``{"clock_skew_s": float | null, "hostname": str | null, "machine_id": bool, "seeded": bool, "net": str | null}``
(``net``: the interface that was given the VM's MAC and address - a fork wakes with its parent's).
The agent applies it only in a VM nexusd launched (never to a host it runs on for tests). Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["IDENTITY_METHOD", "GuestNet", "Identity"]

IDENTITY_METHOD: Final = "nexus/identity"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_IPV4 = re.compile(r"^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$")
_MAX_SEED_HEX = 1024


@dataclass(frozen=True, slots=True)
class GuestNet:
    """The VM's lease, as its NIC must be configured."""

    mac: str
    address: str  # A.B.C.D/P
    gateway: str

    def to_params(self) -> dict[str, Any]:
        return {"mac": self.mac, "address": self.address, "gateway": self.gateway}

    @classmethod
    def from_params(cls, params: Any) -> GuestNet:
        if not isinstance(params, dict):
            raise ValueError("identity.net must be an object")
        mac, address, gateway = params.get("mac"), params.get("address"), params.get("gateway")
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise ValueError(f"identity.net.mac must be a MAC address, got {mac!r}")
        if not isinstance(address, str):
            raise ValueError(f"identity.net.address must be A.B.C.D/P, got {address!r}")
        addr, _, prefix = address.partition("/")
        if not _IPV4.match(addr) or not prefix.isdigit() or not 0 < int(prefix) <= 32:
            raise ValueError(f"identity.net.address must be A.B.C.D/P, got {address!r}")
        if not isinstance(gateway, str) or not _IPV4.match(gateway):
            raise ValueError(f"identity.net.gateway must be A.B.C.D, got {gateway!r}")
        return cls(mac, address, gateway)


@dataclass(frozen=True, slots=True)
class Identity:
    hostname: str
    epoch: float
    machine_id: str | None = None
    seed: str | None = None
    net: GuestNet | None = None

    def to_params(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname,
            "epoch": self.epoch,
            "machine_id": self.machine_id,
            "seed": self.seed,
            "net": self.net.to_params() if self.net is not None else None,
        }

    @classmethod
    def from_params(cls, params: Any) -> Identity:
        if not isinstance(params, dict):
            raise ValueError("identity params must be an object")
        hostname, epoch = params.get("hostname"), params.get("epoch")
        if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
            raise ValueError(f"identity.hostname must be a host name, got {hostname!r}")
        if isinstance(epoch, bool) or not isinstance(epoch, int | float) or epoch <= 0:
            raise ValueError(f"identity.epoch must be seconds since the epoch, got {epoch!r}")
        machine_id, seed = params.get("machine_id"), params.get("seed")
        if machine_id is not None and (not isinstance(machine_id, str) or not _HEX32.match(machine_id)):
            raise ValueError("identity.machine_id must be 32 lowercase hex digits")
        if seed is not None and (
            not isinstance(seed, str) or len(seed) > _MAX_SEED_HEX or len(seed) % 2 or not _is_hex(seed)
        ):
            raise ValueError(f"identity.seed must be at most {_MAX_SEED_HEX} hex digits")
        net = params.get("net")
        return cls(hostname, float(epoch), machine_id, seed, GuestNet.from_params(net) if net is not None else None)


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
