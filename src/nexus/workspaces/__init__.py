"""Drives and copy-on-write copies of them. (btrfs subvolumes and snapshots come with the workspaces issue.)"""

from nexus.workspaces.clone import CloneMethod, clone_file

__all__ = ["CloneMethod", "clone_file"]
