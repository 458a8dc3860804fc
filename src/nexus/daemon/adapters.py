"""Adapters from the asset and image modules to the domain ports the services use."""

from __future__ import annotations

from pathlib import Path

import nexus
from nexus.assets import KernelStore
from nexus.domain import Image, ImageOrigin, ImageRequest, Kernel, Progress
from nexus.images import manifest
from nexus.images.builder import build_image
from nexus.images.fromdrive import seal_copy
from nexus.images.initramfs import ensure_initramfs

AGENT_SRC = Path(nexus.__file__).resolve().parent  # the package whose agent/ and protocol/ go into images


class DebianKernels:
    """KernelSource: Debian kernel packages cached under ``cache_dir``, each with its Nexus initramfs."""

    def __init__(self, cache_dir: Path) -> None:
        self._store = KernelStore(cache_dir)
        self._initrds: dict[str, Path] = {}  # checked once per daemon life, not on every boot

    def list(self) -> list[Kernel]:
        return self._store.list()

    def get(self, ref: str) -> Kernel:
        return self._store.get(ref)

    def pull(self, ref: str | None, progress: Progress) -> Kernel:
        return self._store.pull(ref, progress)

    def remove(self, version: str) -> None:
        self._store.remove(version)
        self._initrds = {k: p for k, p in self._initrds.items() if p.is_file()}

    def initrd(self, kernel: Kernel) -> Path:
        path = self._initrds.get(kernel.sha256)
        if path is None or not path.is_file():
            path = self._initrds[kernel.sha256] = ensure_initramfs(kernel).path
        return path


class RootfsImageBuilder:
    """ImageBuilder: debootstrap or a rootfs tarball, plus packages and the agent, made into an ext4 file; or a
    copy of a VM's root drive with the agent renewed."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir

    def build(self, request: ImageRequest, out_dir: Path, progress: Progress) -> Image:
        built = build_image(
            request.base,
            request.name,
            request.size_mib,
            out_dir,
            AGENT_SRC,
            progress,
            sha256=request.sha256,
            cache_dir=self._cache_dir,
            packages=request.packages,
        )
        return _image(built)

    def seal_copy(self, copy: Path, name: str, origin: ImageOrigin, out_dir: Path, progress: Progress) -> Image:
        return _image(seal_copy(copy, name, origin, out_dir, AGENT_SRC, progress))


def _image(built: manifest.Image) -> Image:
    return Image(
        id=built.id,
        name=built.name,
        base=built.base,
        path=built.path,
        size_mib=built.size_mib,
        sha256=built.sha256,
        init_system=built.init_system,
        agent_version=built.agent_version,
        built_at=built.built_at,
        packages=built.packages,
        origin=built.origin,
    )
