"""Pack paths as a tar stream, piece by piece: the writer side of ``vm cp -r`` (the agent packs guest paths, the
CLI host paths) and of the agent's ``archive_create`` tool.

A generator, not ``tarfile``'s writer: the consumer pulls pieces (headers, and file data at most ``piece_bytes``
at a time), so memory stays flat and a consumer that stops pulling stops the packing. The headers are
``tarfile``'s own (PAX format: long names, large files, any name bytes), so any tar reads the stream.

What goes in, like ``tar --numeric-owner``: regular files, directories (before what is in them, names sorted),
symbolic links (as links, never followed), hard links among the packed files (as links to the first name seen);
mode bits, uid/gid and mtime (whole seconds). Sockets, FIFOs and device nodes are skipped and counted in
``PackStats.skipped`` (unpacking refuses them; a tree copy wants their data, and they have none). An entry
that vanishes while the tree is walked is skipped too; a file that shrinks while it is read is an error.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from nexus.protocol.archive import ArchiveError

__all__ = ["PackStats", "pack"]

PIECE_BYTES: Final = 1024 * 1024
_BLOCK: Final = tarfile.BLOCKSIZE
_RECORD: Final = tarfile.RECORDSIZE


@dataclass(slots=True)
class PackStats:
    """Counts of what went into the stream, filled in while it is produced."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0  # file data, not the stream's size
    skipped: list[str] = field(default_factory=list)  # arcnames of sockets, FIFOs and devices

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "hardlinks": self.hardlinks,
            "bytes": self.bytes,
            "skipped": list(self.skipped),
        }


def _walk(path: str, arcname: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(path, arcname, lstat)`` of ``path`` and, for a directory, of everything below it, parents first."""
    stack = [(path, arcname)]
    while stack:
        here, name = stack.pop()
        try:
            st = os.lstat(here)
            below = sorted(os.listdir(here)) if stat.S_ISDIR(st.st_mode) else []
        except FileNotFoundError:
            if here == path:
                raise
            continue  # vanished since its directory was listed
        yield here, name, st
        stack.extend((os.path.join(here, n), f"{name}/{n}") for n in reversed(below))


def _file_data(path: str, size: int, piece_bytes: int) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        left = size
        while left:
            data = f.read(min(left, piece_bytes))
            if not data:
                raise ArchiveError(f"{path} shrank while it was being archived")
            left -= len(data)
            yield data
    if size % _BLOCK:
        yield bytes(_BLOCK - size % _BLOCK)


def pack(
    sources: Sequence[tuple[str, str]],
    stats: PackStats | None = None,
    *,
    exclude: frozenset[tuple[int, int]] = frozenset(),
    check: Callable[[], None] | None = None,
    piece_bytes: int = PIECE_BYTES,
) -> Iterator[bytes]:
    """The tar stream of each ``(path, arcname)`` in ``sources``. ``exclude`` holds ``(st_dev, st_ino)`` of files
    to leave out (an archive being written inside the tree it packs); ``check`` is called before each entry and
    may raise to stop (cancellation)."""
    stats = stats if stats is not None else PackStats()
    links: dict[tuple[int, int], str] = {}
    written = 0
    for path, arcname in sources:
        for here, name, st in _walk(path, arcname):
            if check is not None:
                check()
            key = (st.st_dev, st.st_ino)
            if key in exclude:
                continue
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
            data: Iterator[bytes] = iter(())
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                stats.dirs += 1
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(here)
                stats.symlinks += 1
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in links:
                info.type, info.linkname = tarfile.LNKTYPE, links[key]
                stats.hardlinks += 1
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    links[key] = name
                info.type, info.size = tarfile.REGTYPE, st.st_size
                data = _file_data(here, st.st_size, piece_bytes)
                stats.files += 1
                stats.bytes += st.st_size
            else:
                stats.skipped.append(name)
                continue
            header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
            yield header
            written += len(header)
            for piece in data:
                yield piece
                written += len(piece)
    end = 2 * _BLOCK  # two zero blocks end the archive; the last record is padded to its full size
    end += -(written + end) % _RECORD
    yield bytes(end)
