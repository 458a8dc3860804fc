"""Unpack the uncompressed kernel ELF (vmlinux) from a bzImage, for a faster boot through the PVH entry point.

QEMU boots an ELF kernel with a Xen PVH note (``XEN_ELFNOTE_PHYS32_ENTRY``) directly, so the guest skips the
real-mode setup and the self-decompression of the bzImage: ~0.6 s less per boot under TCG with the Debian cloud
kernel. The payload's format is told by its magic bytes; gzip, bzip2, xz and lzma are unpacked in-process, lz4
and zstd with their command-line tools (``lz4``, ``zstd``) when installed. When that is impossible, or the
result is not a PVH-capable ELF, there is simply no vmlinux and the bzImage is booted as before.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

_SETUP_MAGIC = b"HdrS"
_XEN_ELFNOTE_PHYS32_ENTRY = 18
_PT_NOTE = 4
_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x5d\x00\x00", "lzma"),
    (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
_TOOLS = {"lz4": ["lz4", "-d", "-c"], "zstd": ["zstd", "-q", "-d", "-c"]}


def bzimage_payload(blob: bytes) -> tuple[str, bytes] | None:
    """(compression name, compressed payload) of a bzImage (boot protocol ≥ 2.08), or None if it is not one."""
    if len(blob) < 0x250 or blob[0x202:0x206] != _SETUP_MAGIC:
        return None
    if struct.unpack_from("<H", blob, 0x206)[0] < 0x208:
        return None
    setup_bytes = ((blob[0x1F1] or 4) + 1) * 512
    offset, length = struct.unpack_from("<II", blob, 0x248)
    payload = blob[setup_bytes + offset : setup_bytes + offset + length]
    for magic, name in _MAGICS:
        if payload.startswith(magic):
            return name, payload
    return None


def has_pvh_note(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF carries the Xen PVH entry note QEMU needs to boot it."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for index in range(phnum):
        base = phoff + index * phentsize
        if base + 56 > len(elf):
            return False
        (p_type,) = struct.unpack_from("<I", elf, base)
        if p_type != _PT_NOTE:
            continue
        (p_offset,) = struct.unpack_from("<Q", elf, base + 8)
        (p_filesz,) = struct.unpack_from("<Q", elf, base + 32)
        pos, end = p_offset, min(p_offset + p_filesz, len(elf))
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _decompress(kind: str, payload: bytes) -> bytes | None:
    try:
        if kind == "gzip":
            return gzip.decompress(payload)
        if kind == "bzip2":
            return bz2.decompress(payload)
        if kind in ("xz", "lzma"):
            fmt = lzma.FORMAT_XZ if kind == "xz" else lzma.FORMAT_ALONE
            return lzma.LZMADecompressor(format=fmt).decompress(payload)
    except (OSError, EOFError, lzma.LZMAError):
        return None
    argv = _TOOLS.get(kind)
    if argv is None or shutil.which(argv[0]) is None:
        return None
    # The kernel build appends the uncompressed size (4 bytes) after the stream; the tools stop at the stream's
    # end and may complain about it, so a non-zero exit with output is still judged by the ELF check below.
    done = subprocess.run(argv, input=payload, capture_output=True, check=False, timeout=300)
    return done.stdout or None


def extract_vmlinux(bzimage: Path, out: Path) -> bool:
    """Write the PVH-bootable ELF inside ``bzimage`` to ``out`` (atomically); False when that is not possible."""
    found = bzimage_payload(bzimage.read_bytes())
    if found is None:
        return False
    elf = _decompress(*found)
    if elf is None or not has_pvh_note(elf):
        return False
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(elf)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True
