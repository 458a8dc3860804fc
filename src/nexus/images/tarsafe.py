"""Unpack a root filesystem tarball into a directory without letting any member escape it.

Python's ``data``/``tar`` filters are too strict for a root filesystem (they refuse absolute symlinks such as
Alpine's ``/bin/sh -> /bin/busybox`` and clear setuid and sticky bits); this filter keeps ownership and mode
bits but checks every member as a chroot would see it:
- names are made relative; a member whose name holds ``..`` is refused (Invalid);
- the member's parent directory is resolved inside the tree (:func:`nexus.images.rootfs.resolve_in_root`),
  so a symlinked directory in the archive cannot redirect later members onto the host;
- hard links must name a member inside the tree; symlinks may point anywhere (they are only data), and a
  member that lands where an earlier symlink is replaces the link instead of writing through it;
- device nodes and FIFOs are skipped (the guest mounts devtmpfs on /dev), and so is anything else unusual.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nexus.domain.errors import Invalid
from nexus.images.rootfs import resolve_in_root


@dataclass(frozen=True, slots=True)
class ExtractReport:
    members: int
    skipped: tuple[str, ...]  # names of device nodes / FIFOs / other specials left out


def clean_name(name: str) -> str:
    """A member name made relative and normalised; Invalid when it climbs out with ``..``."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", "", ".")]
    if ".." in parts:
        raise Invalid(f"unsafe tarball member {name!r}: it contains '..'")
    return "/".join(parts)


class _RootfsFilter:
    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.skipped: list[str] = []
        self.count = 0

    def __call__(self, member: tarfile.TarInfo, _dest_path: str) -> tarfile.TarInfo | None:
        name = clean_name(member.name)
        if not name:
            return None  # the archive's "./" entry: the destination already exists
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            self.skipped.append(name)
            return None
        parent = PurePosixPath(name).parent
        host_parent = resolve_in_root(self.dest, str(parent)) if str(parent) != "." else self.dest
        final = host_parent / PurePosixPath(name).name
        if final.is_symlink():
            final.unlink()  # never write or chown through a link an earlier member planted
        rel = final.relative_to(self.dest).as_posix()
        changes: dict[str, str] = {"name": rel}
        if member.islnk():
            target = clean_name(member.linkname)
            if not target:
                raise Invalid(f"unsafe tarball member {member.name!r}: hard link to the root directory")
            changes["linkname"] = (
                resolve_in_root(self.dest, target, follow_last=False).relative_to(self.dest).as_posix()
            )
        self.count += 1
        return member.replace(**changes, deep=False)  # type: ignore[arg-type]


def extract_rootfs(tarball: Path, dest: Path) -> ExtractReport:
    """Extract ``tarball`` (any compression tarfile reads) into the existing directory ``dest``."""
    check = _RootfsFilter(dest)
    try:
        with tarfile.open(tarball, "r:*") as archive:
            archive.extractall(dest, numeric_owner=True, filter=check)
    except tarfile.TarError as exc:
        raise Invalid(f"cannot unpack {tarball.name}: {exc}") from exc
    return ExtractReport(check.count, tuple(check.skipped))
