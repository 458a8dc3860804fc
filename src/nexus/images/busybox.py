"""Find a statically linked BusyBox on the host (the initramfs and BusyBox-init guests run it).

A binary is static when its ELF program headers have no ``PT_INTERP`` (no dynamic loader is asked for); the
header is parsed here, no ``file``/``ldd`` child process. Candidates: the files of the ``busybox-static``
package (``dpkg -L``), then ``/usr/bin/busybox`` and ``/bin/busybox``. This module does not install anything.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from nexus.domain.errors import Unavailable

_PT_INTERP = 3
_FALLBACKS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))


def is_static_elf(header: bytes) -> bool:
    """Whether ``header`` (the first few KiB of a file) is a 64- or 32-bit little-endian ELF without PT_INTERP.

    Returns False for non-ELF data, big-endian ELF or truncated headers.
    """
    if len(header) < 52 or header[:4] != b"\x7fELF" or header[5] != 1:
        return False
    is64 = header[4] == 2
    if is64:
        if len(header) < 64:
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
    else:
        (phoff,) = struct.unpack_from("<I", header, 0x1C)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x2A)
    if phnum == 0 or phoff + phentsize * phnum > len(header):
        return False
    types = [struct.unpack_from("<I", header, phoff + i * phentsize)[0] for i in range(phnum)]
    return _PT_INTERP not in types


def is_static_binary(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return is_static_elf(handle.read(8192))
    except OSError:
        return False


def dpkg_list_argv(package: str) -> list[str]:
    return ["dpkg", "-L", package]


def _package_candidates() -> list[Path]:
    try:
        done = subprocess.run(dpkg_list_argv("busybox-static"), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [Path(line) for line in done.stdout.splitlines() if line.endswith("/bin/busybox")]


def find_static_busybox() -> Path:
    """Path of a static busybox on this host; Unavailable with the fix when there is none."""
    for candidate in (*_package_candidates(), *_FALLBACKS):
        if candidate.is_file() and is_static_binary(candidate):
            return candidate.resolve()
    raise Unavailable("no statically linked busybox on this host (apt-get install busybox-static)")
