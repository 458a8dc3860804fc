"""ext4 on data drives: format an empty drive file, grow the filesystem after the file grew.

Pure argv builders (unit-tested) and the two runners that call them; ``mke2fs`` and ``resize2fs`` (e2fsprogs,
already needed to build images) work on the file directly, with no loop device or mount. Not for drives a VM
is using: callers check that first.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from nexus.domain import Unavailable

LABEL = "nexus-data"
_TIMEOUT_S = 600.0


def mkfs_argv(drive: Path, label: str = LABEL) -> list[str]:
    # Inode tables written now (the guest's lazy-init thread would do it under TCG at a high cost); the journal
    # is left as the sparse file's zeros, which is what lazy_journal_init=0 would have written.
    return [
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-m",
        "0",
        "-L",
        label,
        "-E",
        "lazy_itable_init=0,lazy_journal_init=1",
        str(drive),
    ]


def resize_argv(drive: Path) -> list[str]:
    """Grow the filesystem to fill the file (``-f``: the drive was cleanly detached by a stopped VM)."""
    return ["resize2fs", "-f", str(drive)]


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{argv[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise Unavailable(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def format_drive(drive: Path) -> None:
    _run(mkfs_argv(drive))


def grow_filesystem(drive: Path) -> None:
    _run(resize_argv(drive))
