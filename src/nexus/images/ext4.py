"""Make an ext4 filesystem image from a directory with ``mke2fs -d`` (no loop mount, no root-only mounts).

Options: 4 KiB blocks even for small images (mke2fs would otherwise pick 1 KiB "small" blocks), no reserved
blocks (``-m 0``, nobody else shares this disk), inode tables and journal initialised now rather than by
the guest kernel's lazy-init thread at first mount (costly under TCG), root of the fs owned by root.
Also a size estimate so "does not fit" is a clear error rather than mke2fs's "Could not allocate block".
"""

from __future__ import annotations

import os
from pathlib import Path

MIB = 1 << 20
LABEL = "nexus-root"
INODE_RATIO_BYTES = 16384
_JOURNAL_AND_META_MIB = 48


def mke2fs_argv(source: Path, image: Path, size_mib: int, label: str = LABEL) -> list[str]:
    return [
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-i",
        str(INODE_RATIO_BYTES),
        "-m",
        "0",
        "-L",
        label,
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
        "-d",
        str(source),
        str(image),
        f"{size_mib}M",
    ]


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes the files of ``root`` take, rounded to 4 KiB blocks; number of inodes). Symlinks are not followed."""
    used, inodes = 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        inodes += 1 + len(filenames)
        used += 4096 * (1 + len(dirnames) // 128)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            used += -(-st.st_size // 4096) * 4096
    return used, inodes


def min_size_mib(used_bytes: int, inodes: int) -> int:
    """Smallest image that holds the tree with its inode tables, journal and 10 % room."""
    data_mib = used_bytes * 1.1 / MIB
    inode_mib = inodes * 1.25 * INODE_RATIO_BYTES / MIB  # -i sets one inode per 16 KiB of disk
    return int(max(data_mib, inode_mib) + _JOURNAL_AND_META_MIB) + 1
