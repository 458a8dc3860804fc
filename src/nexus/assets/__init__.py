"""Assets Nexus downloads and caches: guest kernels (Debian packages) with their modules.

Public surface: :class:`KernelStore` (pull/list/get/remove) and the :class:`Kernel` value object.
"""

from __future__ import annotations

from nexus.assets.digest import sha256_file
from nexus.assets.kernels import KernelStore, Progress
from nexus.domain.models import Kernel

__all__ = ["Kernel", "KernelStore", "Progress", "sha256_file"]
