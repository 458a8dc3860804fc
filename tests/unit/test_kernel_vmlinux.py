"""Unpacking vmlinux from a bzImage: header parsing, decompression, the PVH note check."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

from nexus.assets.vmlinux import bzimage_payload, extract_vmlinux, has_pvh_note


def elf_with_notes(notes: list[tuple[bytes, int]]) -> bytes:
    """A 64-bit ELF with one PT_NOTE segment holding ``notes`` (name, type)."""
    body = b""
    for name, note_type in notes:
        name0 = name + b"\0"
        desc = b"\0" * 8
        body += struct.pack("<III", len(name0), len(desc), note_type)
        body += name0 + b"\0" * (-len(name0) % 4) + desc
    phoff, phentsize = 64, 56
    note_offset = phoff + phentsize
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_offset, 0, 0, len(body), len(body), 4)
    return header + phdr + body + b"\0" * 64


def bzimage(payload: bytes, setup_sects: int = 4) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload))
    return bytes(setup) + b"\0" * 0x100 + payload + b"\0\0\0\0"


PVH_ELF = elf_with_notes([(b"Xen", 6), (b"Xen", 18)])


def test_pvh_note() -> None:
    assert has_pvh_note(PVH_ELF)
    assert not has_pvh_note(elf_with_notes([(b"Xen", 6), (b"GNU", 18)]))
    assert not has_pvh_note(b"MZ not an elf" * 10)


def test_payload_formats() -> None:
    assert bzimage_payload(bzimage(gzip.compress(PVH_ELF))) == ("gzip", gzip.compress(PVH_ELF))
    xz = lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ)
    assert bzimage_payload(bzimage(xz)) == ("xz", xz)
    assert bzimage_payload(b"\0" * 4096) is None


def test_extract_writes_vmlinux(tmp_path: Path) -> None:
    for payload in (gzip.compress(PVH_ELF), lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ)):
        src, out = tmp_path / "vmlinuz", tmp_path / "vmlinux"
        src.write_bytes(bzimage(payload))
        assert extract_vmlinux(src, out)
        assert out.read_bytes() == PVH_ELF
        out.unlink()


def test_no_vmlinux_without_pvh_note(tmp_path: Path) -> None:
    src, out = tmp_path / "vmlinuz", tmp_path / "vmlinux"
    src.write_bytes(bzimage(gzip.compress(elf_with_notes([(b"GNU", 3)]))))
    assert not extract_vmlinux(src, out)
    assert not out.exists()
    src.write_bytes(b"plain junk" * 100)
    assert not extract_vmlinux(src, out)
