"""Kernel and image use cases: list, pull or build (with Debian packages and profiles, or from a stopped VM's
root drive), inspect, remove (refusing while a VM uses one), and resolving what a VM boots with — pulling the
default kernel or building the default image on first need.

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
    DriveKind,
    DriveStore,
    Image,
    ImageBuilder,
    ImageOrigin,
    ImageRequest,
    ImageStore,
    Invalid,
    InvalidState,
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
from nexus.domain.packages import expand_packages
from nexus.domain.validation import IMAGE_SIZE_MIB_RANGE, check_name
from nexus.services.locks import VmLocks

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
        drives: DriveStore,
        locks: VmLocks,
    ) -> None:
        self._kernels = kernels
        self._builder = builder
        self._images = images
        self._vms = vms
        self._layout = layout
        self._storage = storage
        self._drives = drives
        self._locks = locks
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
        users = [vm.name for vm in self._vms.find(VmFilter(include_pool=True)) if vm.kernel == kernel.version]
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

    async def build_image(
        self, request: ImageRequest, progress: Progress = no_progress, profiles: tuple[str, ...] = ()
    ) -> Image:
        """Build ``request``; its packages and those of ``profiles`` (see ``domain.packages``) are installed."""
        check_name(request.name)
        low, high = IMAGE_SIZE_MIB_RANGE
        if request.size_mib is not None and not low <= request.size_mib <= high:
            raise Invalid(f"image size must be {low}..{high} MiB, got {request.size_mib}")
        request = dataclasses.replace(request, packages=expand_packages(profiles, request.packages))
        self._require_free_name(request.name)
        async with self._image_lock:
            image = await asyncio.to_thread(self._builder.build, request, self._layout.images_dir, progress)
            image = await self._seal_and_record(image)
        log.info(
            "image %s built (%d MiB, %s, %d package(s))",
            image.name,
            image.size_mib,
            image.init_system,
            len(image.packages),
        )
        return image

    async def image_from_vm(self, name: str | None, vm_ref: str, progress: Progress = no_progress) -> Image:
        """Save the root drive of the stopped VM ``vm_ref`` as the image ``name`` (default: the VM's name), with
        the current agent (see ``images.fromdrive``). The VM's lock is held while its drive is copied and sealed."""
        vm = self._vms.get(vm_ref)
        name = check_name(name if name is not None else vm.name)
        self._require_free_name(name)
        async with self._image_lock:
            with self._locks.hold(vm.id, vm.name, "saving its root drive as an image"):
                vm = self._vms.get(vm.id)
                if vm.state.has_process:
                    raise InvalidState(f"VM {vm.name} is {vm.state}; stop it to save its root drive as an image")
                root = next((d for d in self._drives.find(vm.id) if d.kind is DriveKind.ROOT), None)
                if root is None:
                    raise InvalidState(f"VM {vm.name} has no root drive yet: it is made at its first start")
                images_dir = self._layout.images_dir
                work = images_dir / f".from-vm-{name}.part"  # a crash leaves a ".part" dir: removed at start
                copy = work / "drive.ext4"

                def copy_drive() -> str:
                    self._storage.delete_volume(work)
                    work.mkdir(parents=True, mode=0o700)
                    return self._storage.copy_file(self._layout.drive_file(root.id), copy)

                try:
                    progress("copy root drive", 0.0)
                    method = await asyncio.to_thread(copy_drive)
                    origin = ImageOrigin(vm_id=vm.id, vm_name=vm.name, image=vm.image)
                    image = await asyncio.to_thread(self._builder.seal_copy, copy, name, origin, images_dir, progress)
                finally:
                    await asyncio.to_thread(self._storage.delete_volume, work)
                image = await self._seal_and_record(image)
        log.info("image %s saved from VM %s's root drive (%s, %d MiB)", image.name, vm.name, method, image.size_mib)
        return image

    def _require_free_name(self, name: str) -> None:
        try:
            self._images.get(name)
        except NotFound:
            return
        raise Conflict(f"an image named {name!r} already exists; remove it first")

    async def _seal_and_record(self, image: Image) -> Image:
        """Make a freshly made image file read-only (the storage backend's way) and record it."""
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
