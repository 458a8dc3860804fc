"""Kernel and image use cases: list, pull or build, inspect, remove (refusing while a VM uses one), and
resolving what a VM boots with — pulling the default kernel or building the default image on first need.

Long work (apt downloads, debootstrap, mke2fs) runs in a worker thread; the database is only touched back on
the event loop thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from nexus.domain import (
    Conflict,
    Image,
    ImageBuilder,
    ImageRequest,
    ImageStore,
    Invalid,
    Kernel,
    KernelSource,
    Layout,
    NotFound,
    Progress,
    StorageBackend,
    Vm,
    VmFilter,
    VmStore,
)
from nexus.domain.validation import IMAGE_SIZE_MIB_RANGE, check_name

log = logging.getLogger(__name__)

DEFAULT_BASE = "debian-bookworm"
DEFAULT_IMAGE_SIZE_MIB = 1024


def no_progress(_stage: str, _fraction: float) -> None:
    return None


@dataclass(frozen=True, slots=True)
class BootFiles:
    kernel: Kernel
    initrd: Path
    image: Image


class AssetService:
    def __init__(
        self,
        *,
        kernels: KernelSource,
        builder: ImageBuilder,
        images: ImageStore,
        vms: VmStore,
        layout: Layout,
        storage: StorageBackend,
    ) -> None:
        self._kernels = kernels
        self._builder = builder
        self._images = images
        self._vms = vms
        self._layout = layout
        self._storage = storage
        self._kernel_lock = asyncio.Lock()  # one apt pull at a time
        self._image_lock = asyncio.Lock()

    # -- kernels

    def kernels(self) -> list[Kernel]:
        return self._kernels.list()

    async def pull_kernel(self, ref: str | None, progress: Progress = no_progress) -> Kernel:
        async with self._kernel_lock:
            kernel = await asyncio.to_thread(self._kernels.pull, ref, progress)
            progress("building initramfs", 0.95)
            await asyncio.to_thread(self._kernels.initrd, kernel)
        log.info("kernel %s pulled", kernel.version)
        return kernel

    def remove_kernel(self, version: str) -> None:
        kernel = self._kernels.get(version)
        users = [vm.name for vm in self._vms.find(VmFilter()) if vm.kernel == kernel.version]
        if users:
            raise Conflict(f"kernel {kernel.version} is used by VM(s) {', '.join(users)}")
        self._kernels.remove(kernel.version)

    async def kernel_for(self, ref: str, progress: Progress = no_progress) -> Kernel:
        """The cached kernel ``ref`` names, pulled first when it is missing."""
        try:
            return self._kernels.get(ref)
        except NotFound:
            log.info("kernel %s is not cached; pulling it", ref)
            return await self.pull_kernel(ref, progress)

    # -- images

    def images(self) -> list[Image]:
        return self._images.find()

    def image(self, ref: str) -> Image:
        return self._images.get(ref)

    async def build_image(self, request: ImageRequest, progress: Progress = no_progress) -> Image:
        check_name(request.name)
        low, high = IMAGE_SIZE_MIB_RANGE
        if not low <= request.size_mib <= high:
            raise Invalid(f"image size must be {low}..{high} MiB, got {request.size_mib}")
        try:
            self._images.get(request.name)
        except NotFound:
            pass
        else:
            raise Conflict(f"an image named {request.name!r} already exists; remove it first")
        async with self._image_lock:
            image = await asyncio.to_thread(self._builder.build, request, self._layout.images_dir, progress)
            try:
                sealed = await asyncio.to_thread(self._storage.seal_image, image.path)
            except BaseException:
                image.path.unlink(missing_ok=True)
                raise
            image = dataclasses.replace(image, path=sealed)
        try:
            self._images.insert(image)
        except Conflict:
            self._storage.remove_image(image.path)
            raise
        log.info("image %s built (%d MiB, %s)", image.name, image.size_mib, image.init_system)
        return image

    def remove_image(self, ref: str) -> None:
        image = self._images.get(ref)
        users = self._images.users(image.name)
        if users:
            raise Conflict(f"image {image.name} is used by VM(s) {', '.join(users)}; remove them first")
        self._images.delete(image.id)
        self._storage.remove_image(image.path)

    async def image_for(self, name: str, progress: Progress = no_progress) -> Image:
        """The image ``name``; the default base image is built on first use."""
        try:
            return self._images.get(name)
        except NotFound:
            if name != DEFAULT_BASE:
                raise NotFound(f"no image named {name!r}; build one with that name first") from None
        log.info("image %s does not exist yet; building it", name)
        return await self.build_image(
            ImageRequest(name=name, base=DEFAULT_BASE, size_mib=DEFAULT_IMAGE_SIZE_MIB), progress
        )

    # -- what a VM boots with

    async def boot_files(self, vm: Vm, progress: Progress = no_progress) -> BootFiles:
        """What ``vm`` boots with, fetching or building what is missing first."""
        kernel = await self.kernel_for(vm.kernel, progress)
        initrd = await asyncio.to_thread(self._kernels.initrd, kernel)
        image = await self.image_for(vm.image, progress)
        return BootFiles(kernel=kernel, initrd=initrd, image=image)
