"""Tell each guest, as it becomes ready, who it is and what time it is (``nexus/identity``): its host name is its VM's
name, its machine id is derived from its VM's id (stable across boots, distinct between VMs from one image and
between a VM and its forks), a fresh seed is mixed into its random pool (a fork must not replay its parent's random
numbers), its NIC is to have its VM's lease (a fork wakes with its parent's MAC and address), and a guest resumed
from a checkpoint gets its clock set at once instead of running late by the time it spent saved."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

from nexus.domain import AgentLinks, NetInfo, VmStore
from nexus.protocol import IDENTITY_METHOD, GuestNet, Identity

IDENTITY_TIMEOUT_S = 10.0
SEED_BYTES = 64


class IdentityService:
    def __init__(self, vm_store: VmStore, net_info: Callable[[str], NetInfo | None]) -> None:
        self._vm_store = vm_store
        self._net_info = net_info

    async def configure_guest(self, vm_id: str, links: AgentLinks) -> None:
        vm = self._vm_store.get(vm_id)
        ident = Identity(
            hostname=vm.name,
            epoch=time.time(),
            machine_id=hashlib.sha256(f"nexus-machine-id:{vm.id}".encode()).hexdigest()[:32],
            seed=secrets.token_hex(SEED_BYTES),
            net=_guest_net(self._net_info(vm_id)),
        )
        await links.control.call(IDENTITY_METHOD, ident.to_params(), timeout_s=IDENTITY_TIMEOUT_S)


def _guest_net(info: NetInfo | None) -> GuestNet | None:
    return None if info is None else GuestNet(info.mac, f"{info.address}/{info.prefix_len}", str(info.gateway))
