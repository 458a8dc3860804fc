from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from nexus.workspaces import CloneMethod, clone_file

FICLONE = 0x40049409  # linux/fs.h, written out here so the probe does not trust the code under test


def test_sparse_copy_keeps_data_and_holes(tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    with src.open("wb") as fh:
        fh.truncate(64 * 1024 * 1024)
        fh.seek(0)
        fh.write(b"head")
        fh.seek(40 * 1024 * 1024)
        fh.write(os.urandom(100_000))
    dst = tmp_path / "copy.img"
    method = clone_file(src, dst)
    assert method is (CloneMethod.REFLINK if _can_reflink(tmp_path) else CloneMethod.SPARSE_COPY)
    assert dst.read_bytes() == src.read_bytes()
    if method is CloneMethod.SPARSE_COPY:
        assert dst.stat().st_blocks * 512 < 8 * 1024 * 1024  # the 64 MiB file stayed sparse


def _can_reflink(directory: Path) -> bool:
    """Whether ``directory``'s filesystem shares extents (FICLONE), asked of the kernel directly."""
    a, b = directory / ".probe-a", directory / ".probe-b"
    a.write_bytes(b"x" * 4096)
    try:
        with a.open("rb") as src, b.open("wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError:
        return False
    finally:
        a.unlink()
        b.unlink(missing_ok=True)


def test_refuses_to_overwrite_and_leaves_no_partial(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"new")
    dst = tmp_path / "b"
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        clone_file(src, dst)
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        clone_file(tmp_path / "none", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()
