"""Copy-on-write file copies: a reflink (FICLONE) where the filesystem shares extents, else a sparse copy
that writes only the data regions (SEEK_DATA/SEEK_HOLE), so a mostly empty disk image stays cheap."""

from __future__ import annotations

import errno
import fcntl
import os
from enum import StrEnum
from pathlib import Path

FICLONE = 0x40049409  # _IOW(0x94, 9, int), from linux/fs.h
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}
_CHUNK = 4 * 1024 * 1024


class CloneMethod(StrEnum):
    REFLINK = "reflink"
    SPARSE_COPY = "sparse-copy"


def clone_file(src: Path, dst: Path) -> CloneMethod:
    """Make ``dst`` a copy of ``src`` (which must not change meanwhile). ``dst`` must not exist.

    Written to a temporary name and renamed, so a failed copy leaves no partial ``dst``.
    """
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        with src.open("rb") as fin, tmp.open("xb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
                method = CloneMethod.REFLINK
            except OSError as exc:
                if exc.errno not in _NO_REFLINK:
                    raise
                _sparse_copy(fin.fileno(), fout.fileno())
                method = CloneMethod.SPARSE_COPY
        os.link(tmp, dst)  # fails if dst appeared meanwhile, instead of replacing it
    finally:
        tmp.unlink(missing_ok=True)
    return method


def sparse_copy_file(src: Path, dst: Path) -> None:
    """``clone_file`` without trying a reflink: always a sparse copy (the copy backend's one way)."""
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        with src.open("rb") as fin, tmp.open("xb") as fout:
            _sparse_copy(fin.fileno(), fout.fileno())
        os.link(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _sparse_copy(fd_in: int, fd_out: int) -> None:
    size = os.fstat(fd_in).st_size
    offset = 0
    while offset < size:
        try:
            data_start = os.lseek(fd_in, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole remains
                break
            raise
        data_end = os.lseek(fd_in, data_start, os.SEEK_HOLE)
        pos = data_start
        while pos < data_end:
            chunk = os.pread(fd_in, min(_CHUNK, data_end - pos), pos)
            if not chunk:
                break
            written = 0
            while written < len(chunk):
                written += os.pwrite(fd_out, chunk[written:], pos + written)
            pos += len(chunk)
        offset = data_end
    os.ftruncate(fd_out, size)
