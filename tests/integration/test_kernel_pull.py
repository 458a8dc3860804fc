"""Pull the real Debian cloud kernel with apt (about 27 MB from the Debian mirror, once: the cache under
/var/tmp/nexus-test-cache, or $NEXUS_TEST_CACHE, is kept between runs so later runs take a second)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from nexus.assets import Kernel, KernelStore, sha256_file
from nexus.assets.vmlinux import has_pvh_note

CACHE = Path(os.environ.get("NEXUS_TEST_CACHE", "/var/tmp/nexus-test-cache"))

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt (a Debian host)")


@pytest.fixture(scope="session")
def store() -> KernelStore:
    return KernelStore(CACHE)


@pytest.fixture(scope="session")
def kernel(store: KernelStore) -> Kernel:
    return store.pull()


def test_pulled_kernel_is_complete(kernel: Kernel) -> None:
    assert kernel.flavour == "cloud-amd64" and kernel.version.endswith("-cloud-amd64")
    assert kernel.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    assert sha256_file(kernel.vmlinuz) == kernel.sha256 and kernel.size_bytes == kernel.vmlinuz.stat().st_size
    assert "CONFIG_VIRTIO_MMIO=" in kernel.config.read_text()
    assert (kernel.modules_dir / "modules.dep").stat().st_size > 0
    assert list(kernel.modules_dir.rglob("virtio_blk.ko*"))
    assert len(kernel.deb_sha256) == 64 and kernel.package_version


def test_vmlinux_when_unpackable(kernel: Kernel) -> None:
    if kernel.vmlinux is None:
        pytest.skip("no vmlinux: the payload's decompressor (lz4 for Debian's kernel) is not installed")
    elf = kernel.vmlinux.read_bytes()
    assert elf[:4] == b"\x7fELF" and has_pvh_note(elf) and kernel.boot_file == kernel.vmlinux


def test_second_pull_is_cached(store: KernelStore, kernel: Kernel) -> None:
    start = time.monotonic()
    again = store.pull(kernel.version)
    assert again == kernel and time.monotonic() - start < 5


def test_lookup_by_flavour_and_abi(store: KernelStore, kernel: Kernel) -> None:
    assert store.get("cloud-amd64") == kernel
    abi = kernel.version.removesuffix("-cloud-amd64")
    assert store.get(abi) == kernel
    assert kernel in store.list()
