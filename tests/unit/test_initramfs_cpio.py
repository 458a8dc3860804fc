"""The newc cpio writer: parse it back, and let GNU cpio read it."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from nexus.domain.errors import Invalid
from nexus.images.cpio import (
    CpioEntry,
    char_device,
    directory,
    newc_archive,
    parse_newc,
    regular,
    symlink,
)

ENTRIES = [
    directory("bin"),
    directory("dev"),
    char_device("dev/console", 5, 1),
    regular("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755),
    symlink("bin/sh", "busybox"),
    regular("init", b"#!/bin/sh\necho hi\n", 0o755),
    regular("empty", b""),
    regular("odd-name-length-x", b"abc"),
]


def test_round_trip() -> None:
    blob = newc_archive(ENTRIES)
    assert blob.startswith(b"070701")
    assert len(blob) % 4 == 0
    assert parse_newc(blob) == ENTRIES


def test_deterministic() -> None:
    assert newc_archive(ENTRIES) == newc_archive(list(ENTRIES))


def test_header_fields() -> None:
    blob = newc_archive([regular("a", b"xyz", 0o600)])
    header = blob[:110]
    mode = int(header[14:22], 16)
    assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600
    assert int(header[54:62], 16) == 3  # filesize
    assert int(header[94:102], 16) == 2  # namesize includes the NUL
    assert blob.rstrip(b"\0").endswith(b"TRAILER!!!")


def test_device_numbers() -> None:
    (console,) = parse_newc(newc_archive([char_device("dev/console", 5, 1)]))
    assert stat.S_ISCHR(console.mode) and (console.rdev_major, console.rdev_minor) == (5, 1)


@pytest.mark.parametrize("name", ["/abs", "a/../b", "..", "", "TRAILER!!!"])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(Invalid):
        newc_archive([regular(name, b"x")])


def test_data_only_on_files_and_links() -> None:
    with pytest.raises(Invalid):
        newc_archive([CpioEntry("d", stat.S_IFDIR | 0o755, b"data")])


def test_truncated_archive_refused() -> None:
    blob = newc_archive(ENTRIES)
    with pytest.raises(Invalid):
        parse_newc(blob[:300])
    with pytest.raises(Invalid):
        parse_newc(b"not a cpio archive at all" * 10)


def test_gnu_cpio_lists_and_extracts(tmp_path: Path) -> None:
    # GNU cpio (scripts/bootstrap.sh installs it) is an independent reader: our own parser agreeing with our own
    # writer would not catch a format mistake made in both.
    blob = newc_archive([e for e in ENTRIES if not stat.S_ISCHR(e.mode)])
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=blob, capture_output=True, check=True).stdout
    assert listing.decode().split() == [e.name for e in ENTRIES if not stat.S_ISCHR(e.mode)]
    subprocess.run(["cpio", "-id", "--quiet"], input=blob, cwd=tmp_path, check=True)
    assert (tmp_path / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin" / "sh").readlink() == Path("busybox")
    assert (tmp_path / "bin" / "busybox").stat().st_mode & 0o777 == 0o755
