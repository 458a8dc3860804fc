"""SnapshotService around the guest freeze: freeze before and thaw after the copy, thaw even when the copy fails,
nothing left behind by a failure, no freeze for a VM without a process, refusal for one that is not ready. Real
SQLite and the copy backend; the runtime is a fake that records the agent requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from nexus.domain import (
    Drive,
    DriveKind,
    InvalidState,
    Layout,
    Role,
    Unavailable,
    Vm,
    VmState,
    utcnow,
)
from nexus.services import DriveService, SnapshotService, VmRuntime, VmService
from nexus.services.locks import VmLocks
from nexus.store import DriveRepo, ImageRepo, SnapshotRepo, VmRepo, connect, migrate
from nexus.workspaces import CopyBackend

pytestmark = pytest.mark.anyio


class FakeRuntime:
    def __init__(self, fail_freeze: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_freeze = fail_freeze

    async def agent_request(self, vm_id: str, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        self.calls.append(method)
        if self.fail_freeze and method == "nexus/freeze":
            raise Unavailable("the agent did not answer")
        return {}


class BrokenCopy(CopyBackend):
    def clone_volume(self, source: Path, dest: Path, readonly: bool) -> None:
        dest.mkdir()  # half-made, as a copy that died midway leaves it
        raise OSError(28, "No space left on device")


def _setup(
    tmp_path: Path, state: VmState, runtime: FakeRuntime, backend: CopyBackend
) -> tuple[SnapshotService, Layout]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    conn = connect(tmp_path / "nexus.db")
    migrate(conn)
    layout = Layout(tmp_path / "state", tmp_path / "run")
    vms, drives, snaps = VmRepo(conn), DriveRepo(conn), SnapshotRepo(conn)
    now = utcnow()
    vms.insert(Vm("v1", "web", Role.WORK, 1, 256, "img", "k", VmState.CREATED, now, now), "created")
    if state is not VmState.CREATED:
        vms.set_state("v1", VmState.CREATED, state, "test")
    drives.insert(Drive("d1", "web.root", DriveKind.ROOT, 16, now, vm_id="v1"))
    layout.drives_dir.mkdir(parents=True)
    backend.create_volume(layout.drive_volume("d1"))
    layout.drive_file("d1").write_bytes(b"disk")
    drive_service = DriveService(
        drives=drives,
        snapshots=snaps,
        vms=vms,
        images=ImageRepo(conn),
        backend=backend,
        layout=layout,
        format_drive=lambda p: None,
        grow_filesystem=lambda p: None,
        is_running=lambda _: True,
    )
    service = SnapshotService(
        vms=cast(VmService, None),
        drives=drive_service,
        vm_store=vms,
        drive_store=drives,
        snapshots=snaps,
        runtime=cast(VmRuntime, runtime),
        layout=layout,
        locks=VmLocks(),
    )
    return service, layout


async def test_ready_vm_is_frozen_around_the_copy(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    service, layout = _setup(tmp_path, VmState.READY, runtime, CopyBackend("t"))
    snap = await service.create("web", "s1")
    assert runtime.calls == ["nexus/freeze", "nexus/thaw"]
    assert (layout.snapshot_volume(snap.id, "d1") / "disk.img").read_bytes() == b"disk"


async def test_failed_copy_still_thaws_and_leaves_nothing(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    service, layout = _setup(tmp_path, VmState.READY, runtime, BrokenCopy("t"))
    with pytest.raises(OSError, match="No space"):
        await service.create("web", "s1")
    assert runtime.calls == ["nexus/freeze", "nexus/thaw"]
    assert service.find("web") == []
    assert list(layout.snapshots_dir.iterdir()) == []


async def test_failed_freeze_copies_nothing(tmp_path: Path) -> None:
    runtime = FakeRuntime(fail_freeze=True)
    service, layout = _setup(tmp_path, VmState.READY, runtime, CopyBackend("t"))
    with pytest.raises(Unavailable):
        await service.create("web", "s1")
    assert runtime.calls == ["nexus/freeze"]
    assert service.find("web") == [] and not layout.snapshots_dir.exists()


async def test_no_freeze_without_a_process_and_refusal_while_paused(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    service, _ = _setup(tmp_path / "a", VmState.STOPPED, runtime, CopyBackend("t"))
    await service.create("web", "s1")
    assert runtime.calls == []
    paused, _ = _setup(tmp_path / "b", VmState.PAUSED, runtime, CopyBackend("t"))
    with pytest.raises(InvalidState, match="paused"):
        await paused.create("web", "s1")
    assert runtime.calls == []
