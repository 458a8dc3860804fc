"""Which requests a warm-pool VM may stand in for: only plain ones, of exactly the template's resolved shape."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from nexus.domain import ExpiryAction, Lifetime, PoolTemplate, PublishedPort, Role, Vm, VmSpec, VmState
from nexus.domain.egress import EgressMode, HostPattern
from nexus.services.pools import is_plain, shape, template_shape

TEMPLATE = PoolTemplate("work", "debian-bookworm", "cloud-amd64", 2, 512, True, EgressMode.OPEN, 3)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def vm(**changes: object) -> Vm:
    base = Vm(
        id="a1b2c3d4e5f6",
        name="agent",
        role=Role.WORK,
        vcpus=2,
        mem_mib=512,
        image="debian-bookworm",
        kernel="cloud-amd64",
        state=VmState.CREATED,
        created_at=NOW,
        updated_at=NOW,
        network=True,
        egress=EgressMode.OPEN,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_plain_request_with_tags_may_be_claimed() -> None:
    assert is_plain(VmSpec(name="agent", tags=("team-a",), vcpus=2, image="debian-bookworm"))


@pytest.mark.parametrize(
    "spec",
    [
        VmSpec(name="p", role=Role.PORTAL),
        VmSpec(name="s", role=Role.SERVICE),
        VmSpec(name="g", created_by="0f0e0d0c0b0a"),
        VmSpec(name="w", publish=(PublishedPort.parse("8080:80"),)),
        VmSpec(name="a", egress=EgressMode.PROXY, allow=(HostPattern.parse("pypi.org"),)),
        VmSpec(name="t", lifetime=Lifetime(ttl_s=60)),
        VmSpec(name="r", lifetime=Lifetime(on_expiry=ExpiryAction.REMOVE)),
        VmSpec(name="i", lifetime=Lifetime(idle_suspend_s=60)),
        VmSpec(name="x", pool="work"),
    ],
)
def test_anything_a_pool_vm_is_not_is_never_claimed(spec: VmSpec) -> None:
    assert not is_plain(spec)


def test_the_shape_must_be_the_templates_exactly() -> None:
    assert shape(vm()) == template_shape(TEMPLATE)
    assert shape(vm(name="other", tags=("x",), id="0f0e0d0c0b0a")) == template_shape(TEMPLATE)  # not shape
    for change in (
        {"image": "alpine"},
        {"kernel": "6.1.0-1"},
        {"vcpus": 1},
        {"mem_mib": 1024},
        {"network": False},
        {"egress": EgressMode.NONE},
    ):
        assert shape(vm(**change)) != template_shape(TEMPLATE), change
