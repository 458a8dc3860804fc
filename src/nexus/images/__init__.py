"""Build what a Nexus VM boots: the initramfs for a kernel, and root filesystem images with the agent.

Public surface: :func:`build_image` (base → ext4 image with the agent and its init service),
:func:`ensure_initramfs` (cached per kernel), :class:`Image`, :class:`Initramfs`, :func:`list_images`.
"""

from __future__ import annotations

from nexus.images.builder import build_image
from nexus.images.initramfs import Initramfs, build_initramfs, ensure_initramfs
from nexus.images.initsys import InitSystem, detect_init
from nexus.images.manifest import Image, list_images, read_sidecar

__all__ = [
    "Image",
    "InitSystem",
    "Initramfs",
    "build_image",
    "build_initramfs",
    "detect_init",
    "ensure_initramfs",
    "list_images",
    "read_sidecar",
]
