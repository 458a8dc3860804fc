"""The tar stream both ends speak (``nexus.protocol.tarpack``, ``tarunpack``): what goes in, and every rule that keeps
an unpacking inside its destination, on real files in a temporary directory."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from nexus.protocol import ArchiveError, cp_destination
from nexus.protocol.tarpack import PackStats, pack
from nexus.protocol.tarunpack import Unpacker, member_parts


def _tar(*members: tuple[str, bytes, str, bytes], fmt: int = tarfile.PAX_FORMAT) -> io.BytesIO:
    """A tar of ``(name, type, linkname, data)`` members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, kind, link, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o644
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    buffer.seek(0)
    return buffer


def _file(name: str, data: bytes = b"data\n") -> tuple[str, bytes, str, bytes]:
    return (name, tarfile.REGTYPE, "", data)


def _unpack(dest: Path, source: io.BytesIO, **kw: object) -> dict[str, int]:
    with Unpacker(str(dest), **kw) as unpacker:  # type: ignore[arg-type]
        return unpacker.run(source).as_dict()


@pytest.mark.parametrize(
    ("name", "parts"),
    [("a/b", ("a", "b")), ("./a//b/", ("a", "b")), ("./", ()), ("a/./b", ("a", "b")), ("..a/b..", ("..a", "b.."))],
)
def test_member_names_are_made_relative(name: str, parts: tuple[str, ...]) -> None:
    assert member_parts(name) == parts


@pytest.mark.parametrize(("name", "why"), [("/etc/passwd", "absolute"), ("a/../../b", "'..'"), ("..", "'..'")])
def test_member_names_that_climb_out_are_refused(name: str, why: str) -> None:
    with pytest.raises(ArchiveError, match=why) as info:
        member_parts(name)
    assert repr(name) in str(info.value)


def test_cp_destination(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    assert cp_destination(str(tmp_path / "dir")) == (str(tmp_path / "dir"), None)
    assert cp_destination(str(tmp_path / "dir") + "/") == (str(tmp_path / "dir"), None)
    assert cp_destination(str(tmp_path / "new")) == (str(tmp_path), "new")
    assert cp_destination(str(tmp_path / "file")) == (str(tmp_path), "file")


def test_round_trip_keeps_modes_links_and_mtimes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "a").write_bytes(b"x" * 1000)
    (src / "a").chmod(0o4750)
    (src / "sub" / "deep" / "b").write_bytes(b"")
    os.link(src / "a", src / "sub" / "hard")
    (src / "rel").symlink_to("sub/deep/b")
    (src / "abs").symlink_to("/etc/passwd")
    os.mkfifo(src / "fifo")
    (src / "sub").chmod(0o500)
    os.utime(src / "sub" / "deep" / "b", (1_000_000_000, 1_000_000_000))
    stats = PackStats()
    data = b"".join(pack([(str(src), "src")], stats, piece_bytes=64))
    assert len(data) % tarfile.RECORDSIZE == 0
    assert (stats.files, stats.dirs, stats.symlinks, stats.hardlinks, stats.bytes) == (2, 3, 2, 1, 1000)
    assert stats.skipped == ["src/fifo"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # any tar reader reads it
        names = tar.getnames()
    assert names == ["src", "src/a", "src/abs", "src/rel", "src/sub", "src/sub/deep", "src/sub/deep/b", "src/sub/hard"]

    counts = _unpack(tmp_path / "out", io.BytesIO(data), rename_top="copy")
    assert counts == {"files": 2, "dirs": 3, "symlinks": 2, "hardlinks": 1, "bytes": 1000}
    out = tmp_path / "out" / "copy"
    assert stat.S_IMODE((out / "a").stat().st_mode) == 0o4750  # root, keep_owner: kept
    assert stat.S_IMODE((out / "sub").stat().st_mode) == 0o500  # read-only, set after what is inside
    assert (out / "sub" / "deep" / "b").stat().st_mtime == 1_000_000_000
    assert os.readlink(out / "rel") == "sub/deep/b"
    assert os.readlink(out / "abs") == "/etc/passwd"
    assert (out / "a").stat().st_ino == (out / "sub" / "hard").stat().st_ino
    assert not (out / "fifo").exists()


def test_without_owner_setid_bits_are_dropped(tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.write_text("x")
    src.chmod(0o6755)
    data = io.BytesIO(b"".join(pack([(str(src), "s")])))
    _unpack(tmp_path / "out", data, keep_owner=False)
    assert stat.S_IMODE((tmp_path / "out" / "s").stat().st_mode) == 0o755


def test_pack_leaves_out_excluded_files_and_stops_when_asked(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "keep").write_text("k")
    (tmp_path / "t" / "skip").write_text("s")
    st = (tmp_path / "t" / "skip").stat()
    data = b"".join(pack([(str(tmp_path / "t"), "t")], exclude=frozenset({(st.st_dev, st.st_ino)})))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["t", "t/keep"]

    def stop() -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        b"".join(pack([(str(tmp_path / "t"), "t")], check=stop))


def test_a_file_that_shrinks_while_packed_is_an_error(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 4096)
    pieces = pack([(str(big), "big")], piece_bytes=1024)
    next(pieces)  # the header: the size is fixed now
    big.write_bytes(b"x" * 10)
    with pytest.raises(ArchiveError, match="shrank"):
        list(pieces)


@pytest.mark.parametrize(
    ("members", "refused", "why"),
    [
        ([_file("ok"), _file("../escaped")], "../escaped", "'..'"),
        ([_file("ok"), _file("/abs/escaped")], "/abs/escaped", "absolute"),
        ([("door", tarfile.SYMTYPE, "{outside}", b""), _file("door/escaped")], "door/escaped", "symbolic link"),
        ([("door", tarfile.SYMTYPE, "{outside}", b""), _file("door/x/escaped")], "door/x/escaped", "symbolic link"),
        ([("hl", tarfile.LNKTYPE, "../victim", b"")], "hl", "outside the destination"),
        ([("hl", tarfile.LNKTYPE, "{victim}", b"")], "hl", "outside the destination"),
        ([("ln", tarfile.SYMTYPE, "{victim}", b""), ("hl", tarfile.LNKTYPE, "ln", b"")], "hl", "not a file"),
        ([("d", tarfile.SYMTYPE, "{outside}", b""), ("hl", tarfile.LNKTYPE, "d/victim", b"")], "hl", "symbolic link"),
        ([("hl", tarfile.LNKTYPE, "later", b""), _file("later")], "hl", "not a file unpacked before it"),
        ([("dev", tarfile.CHRTYPE, "", b"")], "dev", "device node"),
        ([("blk", tarfile.BLKTYPE, "", b"")], "blk", "device node"),
        ([("fifo", tarfile.FIFOTYPE, "", b"")], "fifo", "FIFO"),
        ([_file("f"), _file("f/under")], "f/under", "not a directory"),
        ([("d", tarfile.DIRTYPE, "", b""), _file("d")], "d", "a directory is there"),
        ([_file("f"), ("f", tarfile.DIRTYPE, "", b"")], "f", "a file is there"),
    ],
)
def test_escapes_are_refused_and_nothing_lands_outside(
    tmp_path: Path, members: list[tuple[str, bytes, str, bytes]], refused: str, why: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    victim.chmod(0o600)
    fill = {"outside": str(outside), "victim": str(victim)}
    members = [(n, k, link.format(**fill), d) for n, k, link, d in members]
    with pytest.raises(ArchiveError, match=why) as info:
        _unpack(tmp_path / "dest", _tar(*members))
    assert f"archive member {refused!r} refused" in str(info.value)
    assert list(outside.iterdir()) == []
    assert victim.read_text() == "victim\n"
    assert victim.stat().st_nlink == 1 and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "outside", "victim"]


def test_existing_links_in_the_destination_are_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("victim\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sym").symlink_to(victim)
    os.link(victim, dest / "hard")
    (dest / "dirlink").symlink_to(tmp_path)
    _unpack(dest, _tar(_file("sym", b"new\n"), _file("hard", b"new\n")))
    assert victim.read_text() == "victim\n"
    assert (dest / "sym").read_text() == (dest / "hard").read_text() == "new\n"
    assert not (dest / "sym").is_symlink()
    with pytest.raises(ArchiveError, match="a symbolic link is there, it is not made a directory"):
        _unpack(dest, _tar(("dirlink", tarfile.DIRTYPE, "", b""), _file("dirlink/x")))
    assert (dest / "dirlink").is_symlink() and not (tmp_path / "x").exists()


def test_an_existing_symlink_on_the_way_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "sub").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ArchiveError, match="sub is a symbolic link"):
        _unpack(dest, _tar(_file("sub/x")))
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_rename_top_refuses_a_second_top_entry(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not under the archive's one top entry"):
        _unpack(tmp_path / "d", _tar(_file("one/a"), _file("two/b")), rename_top="new")
    assert (tmp_path / "d" / "new" / "a").is_file()
    with pytest.raises(ArchiveError, match="cannot name the copy"):
        Unpacker(str(tmp_path / "d"), rename_top="a/b")


def test_compressed_and_gnu_streams_are_read(tmp_path: Path) -> None:
    plain = _tar(_file("x" * 150 + "/long-name", b"gnu\n"), fmt=tarfile.GNU_FORMAT).getvalue()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar, tarfile.open(fileobj=io.BytesIO(plain)) as source:
        for member in source:
            tar.addfile(member, source.extractfile(member))
    buffer.seek(0)
    _unpack(tmp_path / "d", buffer)
    assert (tmp_path / "d" / ("x" * 150) / "long-name").read_text() == "gnu\n"


def test_garbage_is_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a valid tar stream"):
        _unpack(tmp_path / "d", io.BytesIO(b"this is not a tar archive at all" * 100))
