"""Tell each guest, as it becomes ready, who it is and what time it is (``nexus/identity``): its host name is its VM's
name, and a guest resumed from a checkpoint gets its clock set at once instead of running late by the time it spent
saved."""

from __future__ import annotations

import time

from nexus.domain import AgentLinks, VmStore
from nexus.protocol import IDENTITY_METHOD, Identity

IDENTITY_TIMEOUT_S = 10.0


class IdentityService:
    def __init__(self, vm_store: VmStore) -> None:
        self._vm_store = vm_store

    async def configure_guest(self, vm_id: str, links: AgentLinks) -> None:
        vm = self._vm_store.get(vm_id)
        ident = Identity(hostname=vm.name, epoch=time.time())
        await links.control.call(IDENTITY_METHOD, ident.to_params(), timeout_s=IDENTITY_TIMEOUT_S)
