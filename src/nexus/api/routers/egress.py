"""/v1/vms/{ref}/egress: how a VM reaches the outside — its mode, its proxy's allow-list, and the proxy's latest
decisions for it (from the audit log). Changed only while the VM is stopped."""

from __future__ import annotations

from fastapi import APIRouter

from nexus.api.deps import Audit, Network, Vms
from nexus.domain import Vm
from nexus.domain.audit import Via
from nexus.domain.egress import EgressMode, HostPattern
from nexus.schemas import AuditEntryOut, VmEgressOut, VmEgressSet
from nexus.services import NetworkService
from nexus.services.audit import AuditService

router = APIRouter(prefix="/v1/vms", tags=["egress"])
RECENT = 20


def _out(vm: Vm, allow: tuple[HostPattern, ...], net: NetworkService, audit: AuditService) -> VmEgressOut:
    page = audit.query(vm=vm.id, caller=f"vm:{vm.name}", limit=100)
    recent = [AuditEntryOut.of(e) for e in page.entries if e.via is Via.EGRESS][:RECENT]
    proxy = net.proxy_url(vm.id) if vm.egress is EgressMode.PROXY else None
    return VmEgressOut(vm=vm.name, mode=vm.egress, allow=[str(p) for p in allow], proxy=proxy, recent=recent)


@router.get("/{ref}/egress")
async def get_egress(ref: str, vms: Vms, net: Network, audit: Audit) -> VmEgressOut:
    vm, allow = vms.egress(ref)
    return _out(vm, allow, net, audit)


@router.put("/{ref}/egress")
async def set_egress(ref: str, body: VmEgressSet, vms: Vms, net: Network, audit: Audit) -> VmEgressOut:
    vms.set_egress(ref, body.mode, body.patterns())
    vm, allow = vms.egress(ref)
    return _out(vm, allow, net, audit)
