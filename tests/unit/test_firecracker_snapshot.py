"""A Firecracker snapshot as a checkpoint's files (nexus.vmm.firecracker.snapshot)."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import pytest

from nexus.domain import DriverError
from nexus.vmm.firecracker import chroot_layout
from nexus.vmm.firecracker.snapshot import MEMORY_FILE, STATE_FILE, check, collect, placement, seal, stage


def test_a_directory_without_both_files_is_no_snapshot(tmp_path: Path) -> None:
    (tmp_path / "qemu.vmstate").write_bytes(b"QEVM")
    with pytest.raises(DriverError, match=r"no firecracker\.vmstate, firecracker\.mem"):
        check(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"s")
    with pytest.raises(DriverError, match=r"no firecracker\.mem\)"):
        check(tmp_path)
    (tmp_path / MEMORY_FILE).write_bytes(b"m")
    check(tmp_path)


def test_staged_in_the_chroot_then_moved_out_and_sealed(tmp_path: Path) -> None:
    root, checkpoint = tmp_path / "root", tmp_path / "ckpt"
    root.mkdir()
    checkpoint.mkdir()
    staged = stage(root, 64999, 64999)
    for path in (Path(staged.snapshot_path), Path(staged.mem_path)):
        st = path.stat()
        assert (st.st_uid, st.st_gid, st.st_size) == (64999, 64999, 0)  # the jailed uid writes into them
        path.write_bytes(b"written by firecracker")
    collect(staged, checkpoint)
    assert sorted(p.name for p in root.iterdir()) == []
    assert seal(checkpoint) == 2 * len(b"written by firecracker")
    for name in (STATE_FILE, MEMORY_FILE):
        st = (checkpoint / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o600)


def test_a_failed_move_says_what_the_chroot_base_needs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    staged = stage(root, os.getuid(), os.getgid())
    with pytest.raises(DriverError, match="chroot base must be on the state dir's filesystem"):
        collect(staged, Path("/proc/nonexistent"))


def test_placement_in_a_new_chroot(tmp_path: Path) -> None:
    layout = chroot_layout(tmp_path / "jail", Path("/usr/bin/firecracker"), "vm-2")
    placed = placement(tmp_path / "ckpt", layout)
    assert [(f.source, f.target, f.in_chroot, f.writable) for f in placed] == [
        (tmp_path / "ckpt" / STATE_FILE, layout.root / STATE_FILE, PurePosixPath("/") / STATE_FILE, False),
        (tmp_path / "ckpt" / MEMORY_FILE, layout.root / MEMORY_FILE, PurePosixPath("/") / MEMORY_FILE, False),
    ]
