"""Which requests a warm-pool VM may stand in for (only plain ones, of exactly the template's resolved shape), and
the reconciler's limits: a pool that cannot boot backs off, refills boot a few at a time, surplus is dropped."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from nexus.domain import (
    DriverError,
    ExpiryAction,
    Lifetime,
    PoolTemplate,
    PublishedPort,
    Role,
    StateChange,
    Vm,
    VmFilter,
    VmSpec,
    VmState,
)
from nexus.domain.egress import EgressMode, HostPattern
from nexus.services.locks import VmLocks
from nexus.services.pools import BACKOFF_S, BOOTS_AT_ONCE, PoolService, is_plain, shape, template_shape

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


class FakeVms:
    """What the reconciler uses of VmService and the VM store, in memory; ``start`` fails or hangs as told."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.vms: dict[str, Vm] = {}
        self.starts = 0
        self.hold = asyncio.Event()

    def resolve(self, spec: VmSpec) -> Vm:
        return vm(name=spec.name, id=f"{len(self.vms):012x}", pool=spec.pool, mem_mib=spec.mem_mib or 512)

    def create(self, spec: VmSpec) -> Vm:
        new = self.resolve(spec)
        self.vms[new.id] = new
        return new

    async def start(self, ref: str, wait: bool = True) -> Vm:
        self.starts += 1
        self.vms[ref] = replace(self.vms[ref], state=VmState.STARTING)
        if self.fail:
            self.vms[ref] = replace(self.vms[ref], state=VmState.FAILED)
            raise DriverError("the image does not boot")
        await self.hold.wait()
        self.vms[ref] = replace(self.vms[ref], state=VmState.READY)
        return self.vms[ref]

    async def remove(self, ref: str, force: bool) -> None:
        del self.vms[ref]

    def get(self, ref: str) -> Vm:
        return self.vms[ref]

    def history(self, vm_id: str) -> list[StateChange]:
        return [StateChange(vm_id, VmState.STARTING, VmState.FAILED, "start failed: the image does not boot", NOW)]

    def find(self, flt: VmFilter = VmFilter()) -> list[Vm]:
        return [v for v in self.vms.values() if flt.include_pool or v.pool is None]


class FakePools:
    def __init__(self) -> None:
        self.templates: dict[str, PoolTemplate] = {}

    def put(self, template: PoolTemplate) -> None:
        self.templates[template.name] = template

    def get(self, name: str) -> PoolTemplate:
        return self.templates[name]

    def all(self) -> list[PoolTemplate]:
        return list(self.templates.values())

    def delete(self, name: str) -> None:
        del self.templates[name]


def service(fake: FakeVms, now: list[float]) -> PoolService:
    return PoolService(
        store=FakePools(),
        vms=cast(Any, fake),
        vm_store=cast(Any, fake),
        runtime=cast(Any, None),
        identity=cast(Any, None),
        locks=VmLocks(),
        clock=lambda: now[0],
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_a_pool_that_cannot_boot_backs_off_instead_of_looping() -> None:
    async def scenario() -> None:
        fake, now = FakeVms(fail=True), [100.0]
        pools = service(fake, now)
        pools.set("broken", 1)
        await pools.tick()
        await settle()
        assert fake.starts == 1
        for _ in range(3):  # failed: removed, and nothing boots until the pause is over
            await pools.tick()
            await settle()
        assert (fake.starts, list(fake.vms)) == (1, [])
        status = pools.get("broken")
        assert (status.ready, status.booting) == (0, 0)
        assert status.problem is not None and status.problem.endswith(": start failed: the image does not boot")
        now[0] += BACKOFF_S[0]
        await pools.tick()
        await settle()
        await pools.tick()  # the second failure in a row: a longer pause
        now[0] += BACKOFF_S[0]
        await pools.tick()
        await settle()
        assert fake.starts == 2
        now[0] += BACKOFF_S[1]
        await pools.tick()
        await settle()
        assert fake.starts == 3

    asyncio.run(scenario())


def test_refills_boot_a_few_at_a_time_and_a_smaller_size_drops_the_rest() -> None:
    async def scenario() -> None:
        fake, now = FakeVms(fail=False), [0.0]
        pools = service(fake, now)
        pools.set("big", 5)
        await pools.tick()
        await settle()
        assert fake.starts == BOOTS_AT_ONCE  # all pools together: refills never crowd users' boots out
        assert pools.get("big").booting == BOOTS_AT_ONCE
        fake.hold.set()
        for _ in range(5):
            await pools.tick()
            await settle()
        assert pools.get("big").ready == 5 and pools.get("big").problem is None
        pools.set("big", 2)
        await pools.tick()
        assert pools.get("big").ready == 2 and len(fake.vms) == 2

    asyncio.run(scenario())
