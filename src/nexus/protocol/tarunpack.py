"""Unpack a tar stream into a directory so that nothing is ever written outside it: the reader side of
``vm cp -r`` (the agent unpacks into the guest, the CLI onto the host, where the stream comes from an untrusted
guest) and of the agent's ``archive_extract`` tool. Both ends run this one module, so both apply the same rules.

``tarfile`` only parses the stream (any compression it detects); the writing is done here, through file
descriptors: every path component below the destination is opened with ``O_NOFOLLOW`` under the one before
it, so a symbolic link - planted by an earlier member or already there - is never followed, whatever happens
in between. The rules, each a refusal (``ArchiveError`` naming the member) that stops the unpacking:
- no absolute names, no ``..`` in a name;
- nothing below a symbolic link or a non-directory (``a`` is a link, then ``a/x`` comes);
- hard links only to a regular file already in the destination (no ``..``, not absolute);
- no device nodes, FIFOs or other special members;
- a directory already in the destination is never replaced by anything else, nor anything else by a directory.
An existing file or link where a file or link member lands is replaced (unlinked first, so a hard link or a
symbolic link there is never written through). Symbolic links themselves may point anywhere: they are data, and
nothing is written through them. Modes and mtimes are kept; uid/gid only with ``keep_owner`` when running as root -
otherwise setuid/setgid bits are dropped too, as they would name the wrong owner. Directories get their
attributes last, deepest first, so a read-only directory still receives its members.

Memory stays flat: file data moves in pieces, and ``tarfile``'s list of members seen is emptied as it goes.
What was unpacked before a refusal stays (as with any tar); it is all inside the destination.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Final, Protocol, cast

from nexus.protocol.archive import ArchiveError

__all__ = ["Readable", "UnpackStats", "Unpacker", "member_parts"]

PIECE_BYTES: Final = 1024 * 1024
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SETID: Final = stat.S_ISUID | stat.S_ISGID


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


@dataclass(slots=True)
class UnpackStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "hardlinks": self.hardlinks,
            "bytes": self.bytes,
        }


def member_parts(name: str) -> tuple[str, ...]:
    """The components of a member's name (``.`` and empty ones dropped); ArchiveError for an absolute name or
    one with ``..``. The archive's own ``./`` entry gives ``()``."""
    if name.startswith("/"):
        raise ArchiveError(f"archive member {name!r} refused: it is an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"archive member {name!r} refused: it climbs out with '..'")
    return parts


@dataclass(slots=True)
class _Renamer:
    """Gives the archive's one top-level entry a new name (``cp -r SRC NEW``); a member outside it is refused."""

    new: str
    old: str | None = None

    def __call__(self, parts: tuple[str, ...], name: str) -> tuple[str, ...]:
        if not parts:
            return parts
        if self.old is None:
            self.old = parts[0]
        if parts[0] != self.old:
            raise ArchiveError(f"archive member {name!r} refused: it is not under the archive's one top entry")
        return (self.new, *parts[1:])


@dataclass(slots=True)
class _Dirs:
    """Directory descriptors below the destination, opened one component at a time with ``O_NOFOLLOW``."""

    root: int
    cached: tuple[tuple[str, ...], int] | None = None
    pending: list[tuple[tuple[str, ...], tarfile.TarInfo]] = field(default_factory=list)

    def open(self, parts: tuple[str, ...], name: str, create: bool) -> int:
        """A descriptor of the directory ``parts`` (owned by this object: do not close it)."""
        if not parts:
            return self.root
        if self.cached is not None and self.cached[0] == parts:
            return self.cached[1]
        fd = self.root
        for i, part in enumerate(parts):
            try:
                below = self._step(fd, part, parts[: i + 1], name, create)
            finally:
                if fd != self.root:
                    os.close(fd)
            fd = below
        self.close_cached()
        self.cached = (parts, fd)
        return fd

    @staticmethod
    def _step(fd: int, part: str, upto: tuple[str, ...], name: str, create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise ArchiveError(f"archive member {name!r} refused: {'/'.join(upto)} is not there") from None
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            kind = "a symbolic link" if stat.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode) else "not a directory"
            raise ArchiveError(
                f"archive member {name!r} refused: {'/'.join(upto)} is {kind}, nothing is written through it"
            ) from None

    def close_cached(self) -> None:
        if self.cached is not None:
            os.close(self.cached[1])
            self.cached = None


class Unpacker:
    """Unpacks into ``dest`` (made, with its parents, if missing); ``rename_top`` renames the archive's one
    top-level entry. Construct (which opens ``dest``: errors come early), then ``run`` once, then ``close``."""

    def __init__(self, dest: str, *, rename_top: str | None = None, keep_owner: bool = True) -> None:
        if rename_top is not None and (not rename_top or "/" in rename_top or rename_top in (".", "..")):
            raise ArchiveError(f"cannot name the copy {rename_top!r}")
        try:
            os.makedirs(dest, exist_ok=True)
            root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ArchiveError(f"cannot unpack into {dest}: {exc.strerror}") from exc
        self.dest = dest
        self.stats = UnpackStats()
        self._dirs = _Dirs(root)
        self._rename = _Renamer(rename_top) if rename_top is not None else None
        self._owner = keep_owner and os.geteuid() == 0
        self._uid, self._gid = os.geteuid(), os.getegid()

    def close(self) -> None:
        self._dirs.close_cached()
        os.close(self._dirs.root)

    def __enter__(self) -> Unpacker:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def run(self, source: Readable, check: Callable[[], None] | None = None) -> UnpackStats:
        """Unpack the tar stream ``source`` (read sequentially, never seeked); ``check`` is called before each
        member and may raise to stop (cancellation)."""
        try:
            # A stream: only read() is used, so any Readable will do.
            with tarfile.open(fileobj=cast(IO[bytes], source), mode="r|*", bufsize=PIECE_BYTES) as tar:
                while (member := tar.next()) is not None:
                    # A stream has no going back: keep no list of what went by (an attribute typeshed omits).
                    tar.members.clear()  # type: ignore[attr-defined]
                    if check is not None:
                        check()
                    self._member(tar, member)
        except tarfile.TarError as exc:
            raise ArchiveError(f"not a valid tar stream: {exc}") from exc
        self._finish_dirs()
        return self.stats

    # --- one member --------------------------------------------------------------------------------------------

    def _parts(self, name: str) -> tuple[str, ...]:
        parts = member_parts(name)
        return self._rename(parts, name) if self._rename is not None else parts

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            kind = "a FIFO" if member.isfifo() else "a device node" if member.isdev() else "of an unsupported type"
            raise ArchiveError(f"archive member {name!r} refused: it is {kind}")
        parts = self._parts(name)
        if not parts:
            return  # the archive's "./": the destination itself, left as it is
        parent = self._dirs.open(parts[:-1], name, create=True)
        leaf = parts[-1]
        try:
            existing: os.stat_result | None = os.lstat(leaf, dir_fd=parent)
        except FileNotFoundError:
            existing = None
        if member.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(existing.st_mode) else "a file"
                raise ArchiveError(f"archive member {name!r} refused: {kind} is there, it is not made a directory")
            if existing is None:
                os.mkdir(leaf, 0o700, dir_fd=parent)  # its own mode comes last, with its other attributes
            self._dirs.pending.append((parts, member))
            self.stats.dirs += 1
            return
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise ArchiveError(f"archive member {name!r} refused: a directory is there, it is not replaced")
            os.unlink(leaf, dir_fd=parent)
        if member.issym():
            os.symlink(member.linkname, leaf, dir_fd=parent)
            self._attrs(member, leaf, parent)
            self.stats.symlinks += 1
        elif member.islnk():
            self._hardlink(member, leaf, parent)
        else:
            self._file(tar, member, leaf, parent)

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, leaf: str, parent: int) -> None:
        data = tar.extractfile(member)
        if data is None:  # unreachable for a regular member; tarfile's types say it may be
            raise ArchiveError(f"archive member {member.name!r} has no data")
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        with os.fdopen(fd, "wb", buffering=0) as out:
            while piece := data.read(PIECE_BYTES):
                out.write(piece)
            self._attrs(member, fd)
        self.stats.files += 1
        self.stats.bytes += member.size

    def _hardlink(self, member: tarfile.TarInfo, leaf: str, parent: int) -> None:
        name = member.name
        try:
            target = self._parts(member.linkname)
        except ArchiveError:
            target = ()
        if not target:
            raise ArchiveError(
                f"archive member {name!r} refused: its hard link target {member.linkname!r} is outside the destination"
            ) from None
        # A descriptor of its own: opening the target's directory may replace the cached one, that is ``parent``.
        here = os.dup(parent)
        try:
            there = self._dirs.open(target[:-1], name, create=False)
            try:
                st = os.lstat(target[-1], dir_fd=there)
            except FileNotFoundError:
                st = None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise ArchiveError(
                    f"archive member {name!r} refused: its hard link target {member.linkname!r} is not a file "
                    "unpacked before it"
                )
            os.link(target[-1], leaf, src_dir_fd=there, dst_dir_fd=here, follow_symlinks=False)
        finally:
            os.close(here)
        self.stats.hardlinks += 1

    def _attrs(self, member: tarfile.TarInfo, target: int | str, parent: int | None = None) -> None:
        """Owner, mode and mtime: of the open ``target`` descriptor, or of the link ``target`` in ``parent``."""
        mode = member.mode if self._owner else member.mode & ~_SETID
        if isinstance(target, int):
            if self._owner:
                os.fchown(target, member.uid, member.gid)
            os.fchmod(target, mode)  # after chown, which clears setuid bits
            os.utime(target, (member.mtime, member.mtime))
        else:  # a symbolic link: its mode means nothing on Linux
            if self._owner:
                os.chown(target, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(target, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)

    def _finish_dirs(self) -> None:
        self._dirs.close_cached()
        for parts, member in sorted(self._dirs.pending, key=lambda item: len(item[0]), reverse=True):
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=self._dirs.open(parts[:-1], member.name, create=False))
            try:
                self._attrs(member, fd)
            finally:
                os.close(fd)
        self._dirs.pending.clear()
