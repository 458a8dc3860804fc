"""``nexusctl vm cp -r`` out of a VM unpacks a tar the guest made: a guest is untrusted, so the host side refuses
what would land outside the destination, keeps neither its uid/gid nor setuid bits, and stops the transfer."""

from __future__ import annotations

import io
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.cli import treecopy
from nexus.domain import Invalid


class _Files:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    def read_archive(self, _path: str) -> Iterator[bytes]:
        try:
            for start in range(0, len(self.data), 1000):
                yield self.data[start : start + 1000]
        finally:
            self.closed = True


class _Client:
    """What ``download_tree`` uses of the SDK: ``vms.files(ref).read_archive(path)``."""

    def __init__(self, data: bytes) -> None:
        self.files_ = _Files(data)
        self.vms = self

    def files(self, _ref: str) -> _Files:
        return self.files_


def _tar(*members: tuple[str, bytes, str, int]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, link, mode in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.uid, info.gid = kind, link, mode, 4321, 4321
            data = f"{name}\n".encode() if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _download(data: bytes, dst: Path) -> tuple[dict[str, int], _Files]:
    client: Any = _Client(data)
    return treecopy.download_tree(client, "vm", "/src", str(dst)), client.files_


def test_a_guest_tree_lands_renamed_without_its_owner_or_setuid(tmp_path: Path) -> None:
    data = _tar(("src", tarfile.DIRTYPE, "", 0o755), ("src/run", tarfile.REGTYPE, "", 0o4755))
    counts, files = _download(data, tmp_path / "copy")
    assert counts["files"] == 1 and files.closed
    st = (tmp_path / "copy" / "run").stat()
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid != 4321


@pytest.mark.parametrize(
    ("members", "refused"),
    [
        ([("src", tarfile.DIRTYPE, "", 0o755), ("src/../../escaped", tarfile.REGTYPE, "", 0o644)], "src/../../escaped"),
        ([("src", tarfile.SYMTYPE, "{outside}", 0o777), ("src/escaped", tarfile.REGTYPE, "", 0o644)], "src/escaped"),
        ([("src", tarfile.DIRTYPE, "", 0o755), ("other/escaped", tarfile.REGTYPE, "", 0o644)], "other/escaped"),
    ],
)
def test_a_hostile_guest_tar_is_refused(
    tmp_path: Path, members: list[tuple[str, bytes, str, int]], refused: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [(n, k, link.format(outside=outside), m) for n, k, link, m in members]
    with pytest.raises(Invalid) as info:
        _download(_tar(*members), tmp_path / "dest" / "copy")
    assert f"archive member {refused!r} refused" in info.value.message
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "outside"]
