"""Egress use cases: nexusd's egress proxy (``nexus.egress``) and what it and the guests need.

The proxy listens on the gateway address of the VM network, from the first start of a ``proxy`` VM (the bridge
exists then) and follows the gateway should the network's subnet change. For each request it asks ``resolve`` what
is known of the VM at the client address: its mode, allow-list and secret bindings, read at each request so that a
change applies to the next one. A VM becoming ready is given its environment: the placeholders of the secrets bound
to it, and with egress ``proxy`` the proxy (``http_proxy``...) and the Nexus CA to trust. The firewall rules that
keep a ``proxy`` VM to the proxy are ``nexus.net.ruleset``'s.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Protocol

from nexus.domain import AgentLinks, NotFound, Unavailable, Vm, VmStore
from nexus.domain.audit import AuditLog
from nexus.domain.egress import Binding, EgressMode, VmEgress
from nexus.egress import DEFAULT_BLOCKED, EgressProxy, NexusCA
from nexus.protocol import ENVIRONMENT_METHOD
from nexus.services.network import NetworkService

log = logging.getLogger(__name__)

NO_PROXY = "localhost,127.0.0.1,::1"
ENVIRONMENT_TIMEOUT_S = 60.0  # update-ca-certificates in a slow guest


class Secrets(Protocol):
    def value(self, name: str) -> str | None: ...
    def bindings_for_vm(self, vm: Vm) -> tuple[Binding, ...]: ...
    def placeholders_for_vm(self, vm: Vm) -> dict[str, str]: ...


class EgressService:
    def __init__(
        self,
        *,
        vms: VmStore,
        network: NetworkService,
        secrets: Secrets,
        ca: NexusCA,
        upstream_ssl: ssl.SSLContext,
        audit: AuditLog,
        port: int | None,
        blocked: Sequence[IPv4Network] = (),
    ) -> None:
        """``port``: where the proxy listens on the gateway (None: no proxy; ``proxy`` VMs then reach nothing);
        ``blocked``: networks no request may go to besides loopback and link-local (the VM subnet is added)."""
        self._vms = vms
        self._net = network
        self._secrets = secrets
        self._ca = ca
        self._upstream_ssl = upstream_ssl
        self._audit = audit
        self._port = port
        self._blocked = tuple(blocked)
        self._proxy: EgressProxy | None = None
        self._listening: IPv4Address | None = None
        self._lock = asyncio.Lock()

    @property
    def ca_pem(self) -> bytes:
        return self._ca.pem_bytes()

    # -- the proxy ----------------------------------------------------------------------------------------

    async def listen(self, gateway: IPv4Address) -> None:
        """Make sure the proxy listens on ``gateway`` (the bridge's address, which exists by now); Unavailable when
        it cannot (the port is taken)."""
        async with self._lock:  # two proxy VMs starting at once, or a close meanwhile: one listener, or none
            if self._port is not None and self._listening != gateway:
                await self._close()
                await self._start(gateway, self._port)

    async def _start(self, gateway: IPv4Address, port: int) -> None:
        _, subnet = self._net.plan()
        blocked = (*DEFAULT_BLOCKED, ip_network(subnet), *self._blocked)  # not the host on the VM network, nor VMs
        proxy = EgressProxy(
            resolve=self.resolve,
            secret_value=self._secrets.value,
            ca=self._ca,
            upstream_ssl=self._upstream_ssl,
            audit=self._audit,
            blocked=blocked,
        )
        try:
            await proxy.start(str(gateway), port)
        except OSError as exc:
            raise Unavailable(
                f"the egress proxy cannot listen on {gateway}:{port} ({exc.strerror or exc}); free the port or set "
                "egress_proxy_port in nexusd.toml"
            ) from exc
        self._proxy, self._listening = proxy, gateway
        log.info("egress proxy listening on %s:%d", gateway, port)

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        proxy, self._proxy, self._listening = self._proxy, None, None
        if proxy is not None:
            await proxy.close()

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

    # -- the guest ----------------------------------------------------------------------------------------

    def guest_environment(self, vm: Vm) -> dict[str, str]:
        """The variables VM ``vm`` gets: its secrets' placeholders, and with egress ``proxy`` the proxy."""
        variables = dict(self._secrets.placeholders_for_vm(vm))
        proxy = self._net.proxy_url(vm.id) if vm.egress is EgressMode.PROXY and self._port is not None else None
        if proxy is not None:
            for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
                variables[name] = proxy
            variables["no_proxy"] = variables["NO_PROXY"] = NO_PROXY
        return variables

    async def configure_guest(self, vm_id: str, links: AgentLinks) -> None:
        """Give a VM becoming ready its environment and, when its egress goes through the proxy, the Nexus CA."""
        vm = self._vms.get(vm_id)
        variables = self.guest_environment(vm)
        ca = self._ca.pem_bytes().decode() if vm.egress is EgressMode.PROXY else None
        if not variables and ca is None:
            return
        await links.control.call(ENVIRONMENT_METHOD, {"set": variables, "ca_pem": ca}, ENVIRONMENT_TIMEOUT_S)
        log.info("vm %s: environment set (%s)", vm.name, ", ".join(sorted(variables)) or "the CA only")
