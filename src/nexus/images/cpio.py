"""Write (and read back) cpio archives in the SVR4 "newc" format the Linux kernel unpacks as an initramfs.

Pure functions over bytes: no files are read and no child process is run. Entries carry their own mode,
owner and device numbers, so an archive with ``/dev/console`` can be built without root. Archives are
deterministic (fixed mtime, sequential inode numbers) so the same inputs give the same bytes.
This module does not compress; see :mod:`nexus.images.initramfs`.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

from nexus.domain.errors import Invalid

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110
_FIELDS = 13


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One member of an archive. ``name`` is relative ("bin/busybox"), ``mode`` includes the file type bits."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)


def directory(name: str, perm: int = 0o755) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | perm)


def regular(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
    return CpioEntry(name, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: CpioEntry, name_size: int) -> bytes:
    nlink = 2 if entry.is_dir else 1
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        nlink,
        entry.mtime,
        len(entry.data),
        0,
        0,
        entry.rdev_major,
        entry.rdev_minor,
        name_size,
        0,
    )
    return NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)


def _check_name(name: str) -> None:
    if not name or name.startswith("/") or name == TRAILER or ".." in name.split("/"):
        raise Invalid(f"bad cpio member name {name!r}: must be relative, without '..'")


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """Serialise ``entries`` (in the given order) followed by the trailer.

    Parents must come before their children: the kernel creates members in archive order.
    """
    out = bytearray()
    for ino, entry in enumerate(entries, start=1):
        _check_name(entry.name)
        if entry.data and not (stat.S_ISREG(entry.mode) or entry.is_symlink):
            raise Invalid(f"cpio member {entry.name!r}: only files and symlinks carry data")
        name = entry.name.encode() + b"\0"
        out += _header(ino, entry, len(name)) + name + _pad4(_HEADER_LEN + len(name))
        out += entry.data + _pad4(len(entry.data))
    trailer = TRAILER.encode() + b"\0"
    out += NEWC_MAGIC + b"".join(b"%08X" % v for v in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(trailer), 0))
    out += trailer + _pad4(_HEADER_LEN + len(trailer))
    return bytes(out)


def parse_newc(blob: bytes) -> list[CpioEntry]:
    """Read a newc archive back into entries (up to the trailer). Raises Invalid on malformed input."""
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        header = blob[pos : pos + _HEADER_LEN]
        if len(header) < _HEADER_LEN or header[:6] != NEWC_MAGIC:
            raise Invalid(f"not a newc cpio header at offset {pos}")
        try:
            fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(_FIELDS)]
        except ValueError as exc:
            raise Invalid(f"bad hex field in cpio header at offset {pos}") from exc
        _ino, mode, uid, gid, _nlink, mtime, size, _maj, _min, rmaj, rmin, name_size, _check = fields
        name_start = pos + _HEADER_LEN
        name = blob[name_start : name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(_HEADER_LEN + name_size) % 4)
        data = blob[data_start : data_start + size]
        if len(data) != size:
            raise Invalid(f"cpio member {name!r} is truncated")
        pos = data_start + size + (-size % 4)
        if name == TRAILER:
            return entries
        entries.append(CpioEntry(name, mode, data, uid, gid, mtime, rmaj, rmin))
