"""The three storage backends behind the ``StorageBackend`` port, and the probe that picks one for a state dir.

- ``BtrfsBackend``: each volume is a subvolume; cloning is a snapshot (read-only for snapshots, writable for
  rollbacks and clones), O(1) in the size of the drives; files are reflinked (FICLONE) into volumes.
- ``ReflinkBackend``: each volume is a directory; cloning reflinks every file (O(extents), no data copied).
- ``CopyBackend``: each volume is a directory; cloning is a sparse copy of every file (only data regions).

Images are sealed once built: on btrfs moved (reflinked) into a read-only subvolume ``images/<name>/``; elsewhere
their file is made 0444.

A read-only clone on the directory backends marks its files 0444 (a guard against mistakes, not a security
boundary: nexusd runs as root). Every operation builds under a temporary name and renames into place, so a
failure leaves no half-made volume behind. This module does not know drives, VMs or the database.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import shutil
from pathlib import Path

from nexus.domain import StorageBackend
from nexus.workspaces import btrfs
from nexus.workspaces.clone import FICLONE, CloneMethod, clone_file, sparse_copy_file


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


class BtrfsBackend:
    name = "btrfs"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def create_volume(self, path: Path) -> None:
        btrfs.create_subvolume(path)

    def clone_volume(self, source: Path, dest: Path, readonly: bool) -> None:
        if btrfs.is_subvolume(source):
            btrfs.snapshot(source, dest, readonly=readonly)
            return
        # A directory volume (made before the state dir moved to btrfs): a subvolume of reflinked files.
        tmp = _tmp_name(dest)
        btrfs.create_subvolume(tmp)
        try:
            for entry in sorted(source.iterdir()):
                clone_file(entry, tmp / entry.name)
            if readonly:
                btrfs.set_readonly(tmp, True)
            tmp.rename(dest)
        except BaseException:
            self.delete_volume(tmp)
            raise

    def delete_volume(self, path: Path) -> None:
        if btrfs.is_subvolume(path):
            btrfs.delete_subvolume(path)
        elif path.exists():
            _remove_dir(path)

    def copy_file(self, source: Path, dest: Path) -> str:
        return clone_file(source, dest).value

    def seal_image(self, path: Path) -> Path:
        volume = path.parent / _image_volume_name(path)
        tmp = _tmp_name(volume)
        self.delete_volume(tmp)
        btrfs.create_subvolume(tmp)
        try:
            clone_file(path, tmp / path.name)
            btrfs.set_readonly(tmp, True)
            tmp.rename(volume)
        except BaseException:
            self.delete_volume(tmp)
            raise
        path.unlink()
        return volume / path.name

    def remove_image(self, path: Path) -> None:
        volume = path.parent
        if volume.name == _image_volume_name(path) and btrfs.is_subvolume(volume):  # never any other subvolume
            btrfs.delete_subvolume(volume)
        else:
            path.unlink(missing_ok=True)


class _DirectoryBackend:
    """Volumes as plain directories; files copied by ``_copy``."""

    name = ""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _copy(self, source: Path, dest: Path) -> CloneMethod:
        raise NotImplementedError

    def create_volume(self, path: Path) -> None:
        path.mkdir(mode=0o700)

    def clone_volume(self, source: Path, dest: Path, readonly: bool) -> None:
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "volume exists", str(dest))
        tmp = _tmp_name(dest)
        _remove_dir(tmp)  # a leftover of a crash during an earlier clone
        tmp.mkdir(mode=0o700)
        try:
            for entry in sorted(source.iterdir()):
                self._copy(entry, tmp / entry.name)
                if readonly:
                    (tmp / entry.name).chmod(0o444)
            tmp.rename(dest)
        except BaseException:
            _remove_dir(tmp)
            raise

    def delete_volume(self, path: Path) -> None:
        _remove_dir(path)

    def copy_file(self, source: Path, dest: Path) -> str:
        return self._copy(source, dest).value

    def seal_image(self, path: Path) -> Path:
        path.chmod(0o444)
        return path

    def remove_image(self, path: Path) -> None:
        path.unlink(missing_ok=True)


class ReflinkBackend(_DirectoryBackend):
    name = "reflink"

    def _copy(self, source: Path, dest: Path) -> CloneMethod:
        return clone_file(source, dest)


class CopyBackend(_DirectoryBackend):
    name = "copy"

    def _copy(self, source: Path, dest: Path) -> CloneMethod:
        sparse_copy_file(source, dest)
        return CloneMethod.SPARSE_COPY


def _image_volume_name(image: Path) -> str:
    """``images/<name>.ext4`` is sealed into ``images/<name>/`` (image names hold no dots)."""
    return image.name.split(".")[0]


def _remove_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)


def _reflink_works(directory: Path) -> bool:
    """Try FICLONE on two scratch files in ``directory``."""
    src, dst = directory / ".reflink-probe.src", directory / ".reflink-probe.dst"
    try:
        src.write_bytes(b"nexus")
        with src.open("rb") as fin, dst.open("wb") as fout:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
        return True
    except OSError:
        return False
    finally:
        for path in (src, dst):
            with contextlib.suppress(OSError):
                path.unlink()


def probe_backend(state_dir: Path) -> StorageBackend:
    """The best backend the filesystem of ``state_dir`` supports: btrfs, else reflink, else copy."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if btrfs.is_btrfs(state_dir):
        return BtrfsBackend(f"{state_dir} is on btrfs: drives are subvolumes, snapshots O(1)")
    if _reflink_works(state_dir):
        return ReflinkBackend(f"{state_dir} supports reflinks (FICLONE): snapshots share extents")
    return CopyBackend(f"{state_dir} has neither btrfs nor reflinks: snapshots are sparse full copies")
