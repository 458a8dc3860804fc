"""Byte-compile Python sources inside a guest root filesystem with the host's own compiler.

Debian's minimal Python leaves parts of its standard library (``json``, for one) without ``.pyc`` files, so every
boot from a fresh copy-on-write disk compiles them again - about half a second under TCG. A ``.pyc`` depends only
on the CPython minor version (its magic number is fixed after a release), so when the guest's ``cache_tag``
equals the host's (``cpython-311``) the host compiles them at build time, recording the guest paths for
tracebacks. Symlinked files and directories are skipped: followed on the host they could lead out of the tree
(Debian's ``sitecustomize.py`` points at ``/etc/python3.11/...``). Nothing from the guest is executed.
Timestamp-checked .pyc, as Debian ships them; an existing up-to-date .pyc is left alone.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
import sys
from pathlib import Path, PurePosixPath

from nexus.images import rootfs

_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "__pycache__"})
_PYC_HEADER_BYTES = 16


def can_compile_for(guest_minor: str) -> bool:
    """Whether the host can write .pyc files the guest's CPython ``guest_minor`` ("3.11") will accept."""
    major, _, minor = guest_minor.partition(".")
    return sys.implementation.name == "cpython" and sys.implementation.cache_tag == f"cpython-{major}{minor}"


def _up_to_date(source: Path, cfile: Path) -> bool:
    try:
        header = cfile.read_bytes()[:_PYC_HEADER_BYTES]
    except OSError:
        return False
    st = source.stat()
    expected = importlib.util.MAGIC_NUMBER + b"\0\0\0\0" + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    return header[:12] == expected and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF


def sources_in(host_dir: Path) -> list[Path]:
    """Regular ``.py`` files under ``host_dir``, without following symlinks and skipping test/GUI dirs."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(host_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if name.endswith(".py") and not path.is_symlink() and path.is_file():
                found.append(path)
    return found


def compile_in_root(root: Path, guest_dir: str, guest_minor: str) -> int | None:
    """Compile the modules under ``guest_dir`` of the tree; the number compiled, or None when skipped (versions
    differ or no such directory). Files that do not compile are left for the guest to deal with."""
    host_dir = rootfs.resolve_in_root(root, guest_dir)
    if not can_compile_for(guest_minor) or not host_dir.is_dir():
        return None
    compiled = 0
    for source in sources_in(host_dir):
        cfile = Path(importlib.util.cache_from_source(str(source)))
        if _up_to_date(source, cfile):
            continue
        guest_name = str(PurePosixPath(guest_dir, source.relative_to(host_dir).as_posix()))
        try:
            py_compile.compile(
                str(source),
                cfile=str(cfile),
                dfile=guest_name,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
            )
        except (py_compile.PyCompileError, OSError, ValueError):
            continue
        compiled += 1
    return compiled


def compile_stdlib(root: Path, guest_minor: str) -> int | None:
    return compile_in_root(root, f"/usr/lib/python{guest_minor}", guest_minor)
