"""DriveService.recover at daemon start: a rollback a crash interrupted is finished or dropped, half-made volumes
and unrecorded snapshot files go, a drive volume without a row stays. Real SQLite, the copy backend, a temp dir."""

from __future__ import annotations

from pathlib import Path

from nexus.domain import Drive, DriveKind, Layout, Role, Snapshot, SnapshotDrive, Vm, VmState, utcnow
from nexus.services import DriveService
from nexus.store import DriveRepo, ImageRepo, SnapshotRepo, VmRepo, connect, migrate
from nexus.workspaces import CopyBackend


def _volume(path: Path, content: bytes) -> None:
    path.mkdir(parents=True)
    (path / "disk.img").write_bytes(content)


def test_recover(tmp_path: Path) -> None:
    conn = connect(tmp_path / "nexus.db")
    migrate(conn)
    layout = Layout(tmp_path / "state", tmp_path / "run")
    vms, drives, snaps = VmRepo(conn), DriveRepo(conn), SnapshotRepo(conn)
    now = utcnow()
    vms.insert(Vm("v1", "web", Role.WORK, 1, 256, "img", "k", VmState.STOPPED, now, now), "created")
    for drive_id in ("swapped", "unswapped", "done", "recorded"):
        drives.insert(Drive(drive_id, drive_id, DriveKind.DATA, 16, now, vm_id="v1"))
    snaps.insert(Snapshot("s1", "v1", "kept", now, (SnapshotDrive("done", "done", DriveKind.DATA, None),)))
    d = layout.drives_dir
    _volume(d / ".swapped.rollback", b"snapshot")  # moved away, not yet replaced: finish the rollback
    _volume(d / ".swapped.old", b"before")
    _volume(d / "unswapped", b"current")  # fresh copy made, nothing swapped yet: drop the copy
    _volume(d / ".unswapped.rollback", b"snapshot")
    _volume(d / "done", b"rolled back")  # swapped, old one not yet deleted
    _volume(d / ".done.old", b"before")
    _volume(d / ".half.part", b"x")
    _volume(d / "stray", b"data nobody recorded")
    _volume(d / ".recorded.new", b"made, recorded, not yet renamed in")  # finish it
    _volume(d / ".unrecorded.new", b"made, never recorded")  # nothing ever used it: remove it
    _volume(layout.snapshot_volume("s1", "done"), b"kept")
    _volume(layout.snapshot_volume("s-crashed", "done"), b"copy")
    _volume(layout.images_dir / ".base.part", b"x")

    service = DriveService(
        drives=drives,
        snapshots=snaps,
        vms=vms,
        images=ImageRepo(conn),
        backend=CopyBackend("t"),
        layout=layout,
        format_drive=lambda p: None,
        grow_filesystem=lambda p: None,
        is_running=lambda _: False,
    )
    service.recover()

    assert sorted(p.name for p in d.iterdir()) == ["done", "recorded", "stray", "swapped", "unswapped"]
    assert (d / "recorded" / "disk.img").read_bytes() == b"made, recorded, not yet renamed in"
    assert (d / "swapped" / "disk.img").read_bytes() == b"snapshot"
    assert (d / "unswapped" / "disk.img").read_bytes() == b"current"
    assert (d / "done" / "disk.img").read_bytes() == b"rolled back"
    assert (d / "stray" / "disk.img").read_bytes() == b"data nobody recorded"
    assert [p.name for p in layout.snapshots_dir.iterdir()] == ["s1"]
    assert list(layout.images_dir.iterdir()) == []
    service.recover()  # nothing left to do
    assert sorted(p.name for p in d.iterdir()) == ["done", "recorded", "stray", "swapped", "unswapped"]
