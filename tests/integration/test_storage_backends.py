"""The storage backends on real filesystems: btrfs on a loop device this module makes (subvolumes and snapshots by
ioctl, and reflinks there), and a plain directory (sparse copies); the probe that picks them; and the agent's
freezer with real FIFREEZE/FITHAW on that btrfs."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nexus.agent.drives import Freezer
from nexus.domain import StorageBackend
from nexus.workspaces import BtrfsBackend, CopyBackend, ReflinkBackend, btrfs, probe_backend
from tests.helpers import btrfs_mount, wait_until

MIB = 1 << 20


@pytest.fixture(scope="module")
def btrfs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with btrfs_mount(tmp_path_factory.mktemp("btrfs")) as mnt:
        yield mnt


def _disk(volume: Path) -> bytes:
    """A sparse 256 MiB disk file with 1 MiB of data at 100 MiB; returns that data."""
    data = os.urandom(MIB)
    with (volume / "disk.img").open("wb") as fh:
        fh.truncate(256 * MIB)
        fh.seek(100 * MIB)
        fh.write(data)
    return data


def _read(volume: Path) -> bytes:
    with (volume / "disk.img").open("rb") as fh:
        fh.seek(100 * MIB)
        return fh.read(MIB)


BACKENDS: dict[str, Callable[[Path, Path], tuple[StorageBackend, Path]]] = {
    "btrfs": lambda b, tmp: (BtrfsBackend("test"), b),
    "reflink": lambda b, tmp: (ReflinkBackend("test"), b),
    "copy": lambda b, tmp: (CopyBackend("test"), tmp),
}


@pytest.mark.parametrize("kind", BACKENDS)
def test_volumes_clone_readonly_and_writable(kind: str, btrfs_dir: Path, tmp_path: Path) -> None:
    backend, where = BACKENDS[kind](btrfs_dir, tmp_path)
    root = where / f"t-{kind}"
    root.mkdir()
    try:
        drive, snap, back = root / "drive", root / "snap", root / "back"
        backend.create_volume(drive)
        original = _disk(drive)

        backend.clone_volume(drive, snap, readonly=True)
        assert _read(snap) == original
        assert (snap / "disk.img").stat().st_size == 256 * MIB
        assert (snap / "disk.img").stat().st_blocks * 512 < 16 * MIB  # holes stayed holes
        if kind == "btrfs":
            assert btrfs.is_subvolume(snap) and btrfs.is_readonly(snap)
            with pytest.raises(OSError) as err:
                (snap / "new").write_bytes(b"x")
            assert err.value.errno == errno.EROFS
        else:
            assert (snap / "disk.img").stat().st_mode & 0o222 == 0

        with (drive / "disk.img").open("r+b") as fh:  # the drive changes; the snapshot does not
            fh.seek(100 * MIB)
            fh.write(b"\0" * MIB)
        assert _read(snap) == original

        backend.clone_volume(snap, back, readonly=False)  # a rollback's fresh volume: writable
        assert _read(back) == original
        with (back / "disk.img").open("r+b") as fh:
            fh.write(b"changed")
        assert _read(snap) == original
        if kind == "btrfs":
            assert not btrfs.is_readonly(back)

        with pytest.raises(FileExistsError):
            backend.clone_volume(drive, back, readonly=False)
        assert (back / "disk.img").read_bytes()[:7] == b"changed"
        assert sorted(p.name for p in root.iterdir()) == ["back", "drive", "snap"]  # no half-made volume

        for volume in (snap, back, drive):
            backend.delete_volume(volume)
        backend.delete_volume(drive)  # already gone: nothing to do
        assert list(root.iterdir()) == []
    finally:
        for leftover in root.iterdir():
            backend.delete_volume(leftover)
        root.rmdir()


def test_copy_file_reflinks_on_btrfs_and_copies_elsewhere(btrfs_dir: Path, tmp_path: Path) -> None:
    for backend, where, method in (
        (BtrfsBackend("t"), btrfs_dir, "reflink"),
        (CopyBackend("t"), tmp_path, "sparse-copy"),
    ):
        src = where / "image.ext4"
        src.write_bytes(os.urandom(4096))
        assert backend.copy_file(src, where / "root.img") == method
        assert (where / "root.img").read_bytes() == src.read_bytes()
        for path in (src, where / "root.img"):
            path.unlink()


def test_probe(btrfs_dir: Path, tmp_path: Path) -> None:
    on_btrfs = probe_backend(btrfs_dir / "state")
    assert on_btrfs.name == "btrfs" and "btrfs" in on_btrfs.reason
    elsewhere = probe_backend(tmp_path / "state")
    assert elsewhere.name in ("reflink", "copy")
    assert [p.name for p in (tmp_path / "state").iterdir()] == []  # the reflink probe cleaned up


def test_clone_of_a_plain_directory_volume_on_btrfs(btrfs_dir: Path) -> None:
    """Volumes made before a state dir moved onto btrfs are directories: cloned into subvolumes by reflinks."""
    old, snap = btrfs_dir / "old-dir", btrfs_dir / "old-snap"
    old.mkdir()
    data = _disk(old)
    backend = BtrfsBackend("t")
    backend.clone_volume(old, snap, readonly=True)
    assert btrfs.is_subvolume(snap) and btrfs.is_readonly(snap) and _read(snap) == data
    backend.delete_volume(snap)
    backend.delete_volume(old)
    assert not snap.exists() and not old.exists()


def _writer(path: Path) -> threading.Thread:
    def write() -> None:
        with path.open("wb") as fh:
            fh.write(b"after the freeze")
            os.fsync(fh.fileno())

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_freezer_blocks_writes_until_thawed(btrfs_dir: Path) -> None:
    freezer = Freezer([], root=str(btrfs_dir))
    assert freezer.freeze(timeout_s=30) == [str(btrfs_dir)]
    writer = _writer(btrfs_dir / "during-freeze")
    try:
        writer.join(0.5)
        assert writer.is_alive()  # blocked on the frozen filesystem
        with pytest.raises(RuntimeError, match="already frozen"):
            freezer.freeze(timeout_s=30)
    finally:
        assert freezer.thaw() == [str(btrfs_dir)]
    writer.join(10)
    assert not writer.is_alive()
    assert (btrfs_dir / "during-freeze").read_bytes() == b"after the freeze"
    assert freezer.thaw() == []  # thawing twice is harmless


def test_freezer_thaws_by_itself(btrfs_dir: Path) -> None:
    freezer = Freezer([], root=str(btrfs_dir))
    freezer.freeze(timeout_s=0.5)
    writer = _writer(btrfs_dir / "auto-thaw")
    wait_until(lambda: not writer.is_alive(), 15, "the freezer's timer to thaw")
    assert freezer.auto_thaws == 1
    assert freezer.thaw() == []


@pytest.mark.parametrize("kind", ["btrfs", "copy"])
def test_sealed_images_are_read_only(kind: str, btrfs_dir: Path, tmp_path: Path) -> None:
    backend, where = BACKENDS[kind](btrfs_dir, tmp_path)
    images = where / f"images-{kind}"
    images.mkdir()
    built = images / "base.ext4"
    built.write_bytes(os.urandom(8192))
    content = built.read_bytes()
    sealed = backend.seal_image(built)
    assert sealed.read_bytes() == content
    if kind == "btrfs":
        assert sealed == images / "base" / "base.ext4" and not built.exists()
        assert btrfs.is_subvolume(sealed.parent) and btrfs.is_readonly(sealed.parent)
        with pytest.raises(OSError) as err:
            sealed.write_bytes(b"x")
        assert err.value.errno == errno.EROFS
    else:
        assert sealed == built and sealed.stat().st_mode & 0o222 == 0
    backend.copy_file(sealed, where / f"root-{kind}.img")  # a VM's root drive is made from it as before
    assert (where / f"root-{kind}.img").read_bytes() == content
    (where / f"root-{kind}.img").unlink()
    backend.remove_image(sealed)
    assert list(images.iterdir()) == []
    images.rmdir()
