"""The pure parts of checkpoints: which VM may resume which saved state, and the identity a resumed guest is told."""

from __future__ import annotations

import pytest

from nexus.domain import Conflict, Role, SavedState, Vm, VmState, utcnow
from nexus.protocol import Identity
from nexus.services.vms import check_resumable

STATE = SavedState(vmm="qemu", accel="tcg", kernel="6.1.0-1", vcpus=1, mem_mib=512, size_bytes=1, sha256="0" * 64)


def _vm(**changes: object) -> Vm:
    fields: dict[str, object] = {
        "id": "a1b2c3d4e5f6",
        "name": "web",
        "role": Role.WORK,
        "vcpus": 1,
        "mem_mib": 512,
        "image": None,
        "kernel": None,
        "state": VmState.STOPPED,
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    fields.update(changes)
    return Vm(**fields)  # type: ignore[arg-type]


def test_a_vm_of_the_same_shape_may_resume() -> None:
    check_resumable(_vm(), "qemu", "6.1.0-1", STATE, "Checkpoint c1")


@pytest.mark.parametrize(
    ("vm", "driver", "kernel", "named"),
    [
        (_vm(mem_mib=1024), "qemu", "6.1.0-1", "memory (MiB) 512; VM web has 1024"),
        (_vm(vcpus=2), "qemu", "6.1.0-1", "vCPUs 1; VM web has 2"),
        (_vm(), "firecracker", "6.1.0-1", "VMM qemu; VM web has firecracker"),
        (_vm(), "qemu", "6.1.0-2", "kernel 6.1.0-1; VM web has 6.1.0-2"),
    ],
)
def test_another_shape_is_refused_with_the_difference(vm: Vm, driver: str, kernel: str, named: str) -> None:
    with pytest.raises(Conflict, match="Checkpoint c1 was saved with") as err:
        check_resumable(vm, driver, kernel, STATE, "Checkpoint c1")
    assert named in err.value.message


def test_identity_round_trips_and_refuses_bad_values() -> None:
    ident = Identity(hostname="web-1", epoch=1_800_000_000.5, machine_id="ab" * 16, seed="00ff")
    assert Identity.from_params(ident.to_params()) == ident
    for bad in (
        {"hostname": "-x", "epoch": 1.0},
        {"hostname": "web", "epoch": True},
        {"hostname": "web", "epoch": 1.0, "machine_id": "XY" * 16},
        {"hostname": "web", "epoch": 1.0, "seed": "abc"},
        {"hostname": "web", "epoch": 1.0, "seed": "zz"},
    ):
        with pytest.raises(ValueError):
            Identity.from_params(bad)
