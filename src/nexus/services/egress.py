"""Egress use cases: what nexusd's proxy knows of the VM a request comes from, and the guest's side of it — the
proxy, the placeholders of its secrets and the Nexus CA in its environment, set each time it becomes ready.

The proxy itself (``nexus.egress``) and the firewall rules (``nexus.net.ruleset``) enforce; this module only
assembles what they and the guest need from the store, the network and the secrets."""

from __future__ import annotations

import logging
from typing import Protocol

from nexus.domain import AgentLinks, NotFound, Vm, VmStore
from nexus.domain.egress import Binding, EgressMode, VmEgress
from nexus.protocol import ENVIRONMENT_METHOD
from nexus.services.network import NetworkService

log = logging.getLogger(__name__)

NO_PROXY = "localhost,127.0.0.1,::1"
ENVIRONMENT_TIMEOUT_S = 60.0  # update-ca-certificates in a slow guest


class Secrets(Protocol):
    def bindings_for_vm(self, vm: Vm) -> tuple[Binding, ...]: ...
    def placeholders_for_vm(self, vm: Vm) -> dict[str, str]: ...


class EgressService:
    def __init__(self, *, vms: VmStore, network: NetworkService, secrets: Secrets, ca_pem: bytes | None) -> None:
        self._vms = vms
        self._net = network
        self._secrets = secrets
        self._ca_pem = ca_pem.decode() if ca_pem is not None else None

    def resolve(self, client: str) -> VmEgress | None:
        """What the proxy knows of the VM at address ``client``; None for anything else."""
        vm_id = self._net.vm_at(client)
        if vm_id is None:
            return None
        try:
            vm = self._vms.get(vm_id)
        except NotFound:
            return None
        allow = self._vms.allow_list(vm.id)
        return VmEgress(vm.id, vm.name, vm.egress, allow, self._secrets.bindings_for_vm(vm))

    def guest_environment(self, vm: Vm) -> dict[str, str]:
        """The variables VM ``vm`` gets: its secrets' placeholders, and with egress ``proxy`` the proxy."""
        variables = dict(self._secrets.placeholders_for_vm(vm))
        proxy = self._net.proxy_url(vm.id) if vm.egress is EgressMode.PROXY else None
        if proxy is not None:
            for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
                variables[name] = proxy
            variables["no_proxy"] = variables["NO_PROXY"] = NO_PROXY
        return variables

    async def configure_guest(self, vm_id: str, links: AgentLinks) -> None:
        """Give a VM becoming ready its environment and, when its egress goes through the proxy, the Nexus CA."""
        vm = self._vms.get(vm_id)
        variables = self.guest_environment(vm)
        ca = self._ca_pem if vm.egress is EgressMode.PROXY else None
        if not variables and ca is None:
            return
        params = {"set": variables, "ca_pem": ca}
        await links.control.call(ENVIRONMENT_METHOD, params, ENVIRONMENT_TIMEOUT_S)
        log.info("vm %s: environment set (%s)", vm.name, ", ".join(sorted(variables)) or "the CA only")
