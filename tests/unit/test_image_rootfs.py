"""Paths inside a guest tree resolve as in a chroot; unsafe tarballs are refused."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from nexus.domain.errors import Invalid
from nexus.images import rootfs
from nexus.images.tarsafe import clean_name, extract_rootfs


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "run").mkdir()
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    (root / "etc").mkdir()
    (root / "etc" / "escape").symlink_to("../../..")
    (root / "loop").symlink_to("loop")
    return root


def test_resolves_like_a_chroot(tree: Path) -> None:
    assert rootfs.resolve_in_root(tree, "/bin/python3") == tree / "usr/bin/python3"
    assert rootfs.resolve_in_root(tree, "/var/run/x.pid") == tree / "run/x.pid"
    assert rootfs.resolve_in_root(tree, "/etc/escape/passwd") == tree / "passwd"
    assert rootfs.resolve_in_root(tree, "/../../etc/shadow") == tree / "etc/shadow"
    assert rootfs.resolve_in_root(tree, "/var/run", follow_last=False) == tree / "var/run"
    with pytest.raises(Invalid, match="symlinks"):
        rootfs.resolve_in_root(tree, "/loop/x")


def test_writes_stay_inside(tree: Path, tmp_path: Path) -> None:
    rootfs.write_file(tree, "/var/run/flag", "x")
    assert (tree / "run" / "flag").read_text() == "x"
    rootfs.write_file(tree, "/etc/escape/outside", "y")
    assert (tree / "outside").read_text() == "y"
    assert not (tmp_path / "outside").exists()
    rootfs.make_symlink(tree, "/sbin/init", "/bin/busybox")
    assert os.readlink(tree / "sbin" / "init") == "/bin/busybox"
    rootfs.write_file(tree, "/sbin/init", "#!/bin/sh\n", mode=0o755)  # replaces the link, not its target
    assert not (tree / "sbin" / "init").is_symlink()
    assert stat.S_IMODE((tree / "sbin" / "init").stat().st_mode) == 0o755


def test_link_targets(tree: Path) -> None:
    (tree / "usr" / "bin" / "python3.11").write_text("")
    (tree / "usr" / "bin" / "python3").symlink_to("python3.11")
    assert rootfs.link_target_in_root(tree, "/bin/python3") == "/usr/bin/python3.11"
    assert rootfs.link_target_in_root(tree, "/bin/nope") is None


def add(
    archive: tarfile.TarFile,
    name: str,
    kind: bytes = tarfile.REGTYPE,
    data: bytes = b"",
    link: str = "",
    mode: int = 0o644,
    uid: int = 0,
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.linkname, info.size = kind, mode, uid, link, len(data)
    archive.addfile(info, io.BytesIO(data) if data else None)


def tarball(tmp_path: Path, build: object) -> Path:
    path = tmp_path / "base.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        build(archive)  # type: ignore[operator]
    return path


def test_extracts_a_rootfs_keeping_modes(tmp_path: Path) -> None:
    def build(a: tarfile.TarFile) -> None:
        add(a, "./", tarfile.DIRTYPE, mode=0o755)
        add(a, "./bin", tarfile.DIRTYPE, mode=0o755)
        add(a, "./bin/busybox", data=b"\x7fELF", mode=0o4755)
        add(a, "./bin/sh", tarfile.SYMTYPE, link="/bin/busybox")
        add(a, "./bin/ash", tarfile.LNKTYPE, link="./bin/busybox", mode=0o4755)
        add(a, "./tmp", tarfile.DIRTYPE, mode=0o1777)
        add(a, "./dev/null", tarfile.CHRTYPE)
        add(a, "./dev/fifo", tarfile.FIFOTYPE)

    dest = tmp_path / "dest"
    dest.mkdir()
    report = extract_rootfs(tarball(tmp_path, build), dest)
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert stat.S_IMODE((dest / "bin/busybox").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert (dest / "bin/ash").stat().st_ino == (dest / "bin/busybox").stat().st_ino
    assert set(report.skipped) == {"dev/null", "dev/fifo"}
    assert not (dest / "dev" / "null").exists()


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/../evil"])
def test_dotdot_refused(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(Invalid, match=r"\.\."):
        extract_rootfs(tarball(tmp_path, lambda a: add(a, name, data=b"x")), dest)
    assert not (tmp_path / "evil").exists()


def test_absolute_names_land_inside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_rootfs(tarball(tmp_path, lambda a: add(a, "/etc/passwd", data=b"root")), dest)
    assert (dest / "etc" / "passwd").read_text() == "root"


def test_symlinked_dir_cannot_redirect_members(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()

    def build(a: tarfile.TarFile) -> None:
        add(a, "etc", tarfile.SYMTYPE, link=str(outside))
        add(a, "etc/passwd", data=b"pwned")
        add(a, "lnk", tarfile.SYMTYPE, link=str(outside / "target"))
        add(a, "lnk", data=b"over the link")

    dest = tmp_path / "dest"
    dest.mkdir()
    extract_rootfs(tarball(tmp_path, build), dest)
    assert list(outside.iterdir()) == []
    assert (dest / str(outside).lstrip("/") / "passwd").read_bytes() == b"pwned"
    assert (dest / "lnk").read_bytes() == b"over the link" and not (dest / "lnk").is_symlink()


def test_hardlink_outside_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(Invalid):
        extract_rootfs(tarball(tmp_path, lambda a: add(a, "x", tarfile.LNKTYPE, link="../../etc/passwd")), dest)


def test_clean_name() -> None:
    assert clean_name("./usr//bin/") == "usr/bin"
    assert clean_name("/") == ""
