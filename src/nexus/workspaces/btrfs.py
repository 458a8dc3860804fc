"""btrfs subvolumes through ioctls (stdlib ``fcntl`` + ``struct``; no ``btrfs`` child process, no libbtrfsutil).

What it does: tell whether a path is on btrfs (``statfs`` ``f_type``), create a subvolume, snapshot one
(writable or read-only), delete one, read and set the read-only flag. What it does not: qgroups, send/receive,
nested subvolumes (callers keep subvolumes side by side, never inside each other).

Struct layouts and request numbers are from ``include/uapi/linux/btrfs.h``:

- ``struct btrfs_ioctl_vol_args { __s64 fd; char name[BTRFS_PATH_NAME_MAX + 1]; }`` with
  ``BTRFS_PATH_NAME_MAX`` 4087: 4096 bytes.
- ``struct btrfs_ioctl_vol_args_v2 { __s64 fd; __u64 transid; __u64 flags; union { struct { __u64 size;
  struct btrfs_qgroup_inherit *qgroup_inherit; }; __u64 unused[4]; }; union { char name[BTRFS_SUBVOL_NAME_MAX
  + 1]; __u64 devid; __u64 subvolid; }; }`` with ``BTRFS_SUBVOL_NAME_MAX`` 4039: 8+8+8+32+4040 = 4096 bytes.
- ``BTRFS_IOC_SUBVOL_CREATE = _IOW(0x94, 14, vol_args)``, ``BTRFS_IOC_SNAP_DESTROY = _IOW(0x94, 15, vol_args)``,
  ``BTRFS_IOC_SNAP_CREATE_V2 = _IOW(0x94, 23, vol_args_v2)``, ``BTRFS_IOC_SUBVOL_GETFLAGS = _IOR(0x94, 25, __u64)``,
  ``BTRFS_IOC_SUBVOL_SETFLAGS = _IOW(0x94, 26, __u64)``; ``BTRFS_SUBVOL_RDONLY = 1 << 1``.

Deleting a subvolume by ioctl needs root (or the ``user_subvol_rm_allowed`` mount option); nexusd runs as root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import struct
from pathlib import Path

BTRFS_SUPER_MAGIC = 0x9123683E
_IOC_WRITE, _IOC_READ = 1, 2
_MAGIC = 0x94
_PATH_NAME_MAX = 4087
_SUBVOL_NAME_MAX = 4039
_VOL_ARGS = struct.Struct(f"=q{_PATH_NAME_MAX + 1}s")
_VOL_ARGS_V2 = struct.Struct(f"=qQQ32x{_SUBVOL_NAME_MAX + 1}s")
SUBVOL_RDONLY = 1 << 1


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


IOC_SUBVOL_CREATE = _ioc(_IOC_WRITE, 14, _VOL_ARGS.size)
IOC_SNAP_DESTROY = _ioc(_IOC_WRITE, 15, _VOL_ARGS.size)
IOC_SNAP_CREATE_V2 = _ioc(_IOC_WRITE, 23, _VOL_ARGS_V2.size)
IOC_SUBVOL_GETFLAGS = _ioc(_IOC_READ, 25, 8)
IOC_SUBVOL_SETFLAGS = _ioc(_IOC_WRITE, 26, 8)


class _StatFs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type first; the rest is only room for the kernel to write into.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 112)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def fs_type(path: Path) -> int:
    """The ``statfs`` magic number of the filesystem holding ``path``."""
    buf = _StatFs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(buf.f_type) & 0xFFFFFFFF


def is_btrfs(path: Path) -> bool:
    return fs_type(path) == BTRFS_SUPER_MAGIC


def _name(path: Path) -> bytes:
    name = os.fsencode(path.name)
    if not name or b"/" in name or name in (b".", b".."):
        raise ValueError(f"not a subvolume name: {path.name!r}")
    return name


# The 4 KiB argument structs go in a bytearray: fcntl.ioctl copies immutable arguments through a 1 KiB buffer.
def _dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def create_subvolume(path: Path) -> None:
    """Make an empty subvolume at ``path`` (which must not exist; its parent must)."""
    fd = _dir_fd(path.parent)
    try:
        fcntl.ioctl(fd, IOC_SUBVOL_CREATE, bytearray(_VOL_ARGS.pack(0, _name(path))))
    finally:
        os.close(fd)


def snapshot(source: Path, dest: Path, readonly: bool = False) -> None:
    """Snapshot the subvolume ``source`` as ``dest`` (O(1), whatever the size of the files in it)."""
    src_fd = _dir_fd(source)
    try:
        parent_fd = _dir_fd(dest.parent)
        try:
            args = bytearray(_VOL_ARGS_V2.pack(src_fd, 0, SUBVOL_RDONLY if readonly else 0, _name(dest)))
            fcntl.ioctl(parent_fd, IOC_SNAP_CREATE_V2, args)
        finally:
            os.close(parent_fd)
    finally:
        os.close(src_fd)


def delete_subvolume(path: Path) -> None:
    """Delete the subvolume at ``path`` with everything in it (read-only ones too)."""
    fd = _dir_fd(path.parent)
    try:
        fcntl.ioctl(fd, IOC_SNAP_DESTROY, bytearray(_VOL_ARGS.pack(0, _name(path))))
    finally:
        os.close(fd)


def _flags(fd: int) -> int:
    out = fcntl.ioctl(fd, IOC_SUBVOL_GETFLAGS, b"\0" * 8)
    return int(struct.unpack("=Q", out)[0])


def is_readonly(path: Path) -> bool:
    fd = _dir_fd(path)
    try:
        return bool(_flags(fd) & SUBVOL_RDONLY)
    finally:
        os.close(fd)


def set_readonly(path: Path, readonly: bool) -> None:
    fd = _dir_fd(path)
    try:
        flags = _flags(fd)
        flags = flags | SUBVOL_RDONLY if readonly else flags & ~SUBVOL_RDONLY
        fcntl.ioctl(fd, IOC_SUBVOL_SETFLAGS, struct.pack("=Q", flags))
    finally:
        os.close(fd)


def is_subvolume(path: Path) -> bool:
    """True when ``path`` is the root of a subvolume (btrfs gives subvolume roots inode 256)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == 256 and is_btrfs(path)
