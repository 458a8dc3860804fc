"""EgressService: what the proxy learns of the VM at a client address, and the environment a guest is given."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, cast

import pytest

from nexus.domain import AgentLinks, GuestLink, Role, Vm, VmState
from nexus.domain.audit import AuditEntry
from nexus.domain.egress import Binding, EgressMode, HostPattern, placeholder
from nexus.egress import NexusCA, upstream_context
from nexus.protocol import ENVIRONMENT_METHOD
from nexus.services.egress import EgressService
from nexus.services.network import NetworkService
from nexus.store import VmRepo, open_database

NOW = datetime(2026, 12, 3, tzinfo=UTC)


class FakeNet:
    def __init__(self) -> None:
        self.at: dict[str, str] = {}

    def vm_at(self, address: str) -> str | None:
        return self.at.get(address)

    def proxy_url(self, vm_id: str) -> str | None:
        return "http://10.77.0.1:3128" if vm_id in self.at.values() else None

    def plan(self) -> tuple[str, IPv4Network]:
        return "nexus0", IPv4Network("10.77.0.0/24")


class FakeSecrets:
    def value(self, name: str) -> str | None:
        return "s3cret" if name == "K" else None

    def bindings_for_vm(self, vm: Vm) -> tuple[Binding, ...]:
        return (Binding(1, "K", "api.test", "x-api-key", vm_id=vm.id),) if "keyed" in vm.tags else ()

    def placeholders_for_vm(self, vm: Vm) -> dict[str, str]:
        return {b.secret: placeholder(b.secret) for b in self.bindings_for_vm(vm)}


class Audit:
    def record(self, entry: AuditEntry) -> None:
        pass


class Control:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def call(
        self, method: str, params: Any = None, timeout_s: float | None = 30.0, on_progress: Any = None
    ) -> Any:
        self.calls.append((method, params))
        return {}


def _vm(repo: VmRepo, name: str, egress: EgressMode, tags: tuple[str, ...] = ()) -> Vm:
    vm = Vm(f"id-{name}", name, Role.WORK, 1, 256, "i", "k", VmState.READY, NOW, NOW, tags=tags, egress=egress)
    repo.insert(vm, "created")
    return vm


@pytest.fixture
def world(tmp_path: Path) -> tuple[EgressService, VmRepo, FakeNet]:
    repo = VmRepo(open_database(tmp_path / "nexus.db"))
    net = FakeNet()
    service = EgressService(
        vms=repo,
        network=cast(NetworkService, net),
        secrets=FakeSecrets(),
        ca=NexusCA.load_or_create(tmp_path / "ca"),
        upstream_ssl=upstream_context(),
        audit=Audit(),
        port=3128,
    )
    return service, repo, net


def test_resolve_names_the_vm_its_allow_list_and_bindings(world: tuple[EgressService, VmRepo, FakeNet]) -> None:
    service, repo, net = world
    vm = _vm(repo, "p", EgressMode.PROXY, ("keyed",))
    repo.set_egress(vm.id, EgressMode.PROXY, (HostPattern.parse("api.test"),))
    assert service.resolve("10.77.0.2") is None  # no VM there
    net.at["10.77.0.2"] = vm.id
    known = service.resolve("10.77.0.2")
    assert known is not None and (known.vm_name, known.mode) == ("p", EgressMode.PROXY)
    assert known.allowed("api.test", 443) and not known.allowed("other.test", 443)
    assert [b.secret for b in known.bindings_for("api.test")] == ["K"]
    repo.set_egress(vm.id, EgressMode.PROXY, ())  # read at each request: the next one sees the change
    again = service.resolve("10.77.0.2")
    assert again is not None and not again.allowed("api.test", 443)


def test_a_proxy_guest_gets_the_proxy_its_placeholders_and_the_ca(world: tuple[EgressService, VmRepo, FakeNet]) -> None:
    service, repo, net = world
    proxied, opened = _vm(repo, "p", EgressMode.PROXY, ("keyed",)), _vm(repo, "o", EgressMode.OPEN, ("keyed",))
    net.at["10.77.0.2"] = proxied.id
    control = Control()
    links = AgentLinks(control=cast(GuestLink, control), mcp=cast(GuestLink, control))
    asyncio.run(service.configure_guest(proxied.id, links))
    method, params = control.calls[-1]
    assert method == ENVIRONMENT_METHOD and params["ca_pem"].startswith("-----BEGIN CERTIFICATE-----")
    assert params["set"]["https_proxy"] == "http://10.77.0.1:3128" and params["set"]["K"] == "nexus-secret:K"
    assert "s3cret" not in str(params)  # the value never goes to a guest
    asyncio.run(service.configure_guest(opened.id, links))
    method, params = control.calls[-1]
    assert params == {"set": {"K": "nexus-secret:K"}, "ca_pem": None}  # open: its placeholders only
    plain = _vm(repo, "plain", EgressMode.OPEN)
    before = len(control.calls)
    asyncio.run(service.configure_guest(plain.id, links))
    assert len(control.calls) == before  # nothing to give: nothing sent
