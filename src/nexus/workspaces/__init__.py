"""Workspaces: where drives live and how they are copied — btrfs subvolumes and snapshots through ioctls,
reflink (FICLONE) copies, or sparse full copies — chosen by probing the state dir."""

from nexus.workspaces.clone import CloneMethod, clone_file, sparse_copy_file
from nexus.workspaces.storage import BtrfsBackend, CopyBackend, ReflinkBackend, probe_backend

__all__ = [
    "BtrfsBackend",
    "CloneMethod",
    "CopyBackend",
    "ReflinkBackend",
    "clone_file",
    "probe_backend",
    "sparse_copy_file",
]
