"""Read and write inside a guest root filesystem tree on the host, never escaping it.

A rootfs tree has symlinks meant for the guest (``/var/run -> /run``, ``/bin -> usr/bin``); followed naively on
the host, an absolute one points into the host. Every path here is resolved as a chroot would: absolute link
targets restart at the tree's root and ``..`` stops at it. Nothing is executed inside the tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from nexus.domain.errors import Invalid

_MAX_LINKS = 40


def resolve_in_root(root: Path, guest_path: str, *, follow_last: bool = True) -> Path:
    """The host path that ``guest_path`` names inside ``root``, resolving symlinks as seen from the guest.

    Components that do not exist (yet) are kept as they are. The result is always inside ``root``.
    With ``follow_last=False`` a final symlink is not followed (to replace or inspect the link itself).
    """
    parts = [p for p in PurePosixPath("/", guest_path).parts[1:] if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink() and (parts or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise Invalid(f"too many symlinks resolving {guest_path!r} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in PurePosixPath(target).parts if p not in ("/", "", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def guest_exists(root: Path, guest_path: str) -> bool:
    return os.path.lexists(resolve_in_root(root, guest_path))


def link_target_in_root(root: Path, guest_path: str) -> str | None:
    """The guest path a file finally resolves to ("/usr/lib/systemd/systemd"), None if it does not exist."""
    host = resolve_in_root(root, guest_path)
    if not host.exists():
        return None
    return "/" + str(host.relative_to(root)) if host != root else "/"


def make_dirs(root: Path, guest_dir: str, mode: int = 0o755) -> Path:
    """Create ``guest_dir`` (and parents) inside ``root``; return its host path."""
    host = resolve_in_root(root, guest_dir)
    host.mkdir(mode=mode, parents=True, exist_ok=True)
    return host


def _prepare_leaf(root: Path, guest_path: str) -> Path:
    parent = PurePosixPath("/", guest_path).parent
    host_parent = make_dirs(root, str(parent))
    leaf = host_parent / PurePosixPath(guest_path).name
    if leaf.is_symlink() or leaf.is_file():
        leaf.unlink()
    elif leaf.is_dir():
        shutil.rmtree(leaf)
    return leaf


def write_file(root: Path, guest_path: str, data: bytes | str, mode: int = 0o644) -> Path:
    """Write a regular file at ``guest_path`` (replacing a file or link there); owned by root."""
    leaf = _prepare_leaf(root, guest_path)
    leaf.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(leaf, mode)
    if os.geteuid() == 0:
        os.chown(leaf, 0, 0)
    return leaf


def make_symlink(root: Path, guest_path: str, target: str) -> Path:
    """Create (or replace) the symlink ``guest_path -> target`` inside ``root``."""
    leaf = _prepare_leaf(root, guest_path)
    leaf.symlink_to(target)
    return leaf


def copy_file(root: Path, src: Path, guest_path: str, mode: int | None = None) -> Path:
    """Copy the host file ``src`` to ``guest_path`` inside ``root``."""
    leaf = _prepare_leaf(root, guest_path)
    shutil.copyfile(src, leaf)
    os.chmod(leaf, mode if mode is not None else src.stat().st_mode & 0o7777)
    return leaf
