"""Choosing kernel modules from a config and modules.dep; reading compressed modules."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import pytest

from nexus.domain.errors import Unavailable
from nexus.images.kmods import (
    NEEDS,
    KernelModule,
    ModuleNeed,
    module_name,
    parse_kconfig,
    parse_modules_dep,
    parse_softdeps,
    plan_modules,
    read_module,
)

CONFIG = """#
# CONFIG_FOO is not set
CONFIG_VIRTIO_MMIO=m
CONFIG_VIRTIO_BLK=m
CONFIG_EXT4_FS=y
CONFIG_VIRTIO_CONSOLE=m
CONFIG_VIRTIO_NET=m
CONFIG_ACPI_BUTTON=m
CONFIG_INPUT_EVDEV=y
CONFIG_HW_RANDOM_VIRTIO=m
"""

DEP = """kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio_mmio.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/char/virtio_console.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz \
kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
kernel/drivers/acpi/button.ko.xz:
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko.xz \
kernel/drivers/virtio/virtio_ring.ko.xz
"""


def test_module_name() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert module_name("kernel/fs/ext4/ext4.ko") == "ext4"
    assert module_name("x/y.ko.zst") == "y"


def test_parse_kconfig() -> None:
    config = parse_kconfig(CONFIG)
    assert config["CONFIG_EXT4_FS"] == "y" and config["CONFIG_VIRTIO_BLK"] == "m"
    assert "CONFIG_FOO" not in config


def test_plan_orders_dependencies_first_and_skips_builtins() -> None:
    plan = plan_modules(parse_kconfig(CONFIG), parse_modules_dep(DEP))
    names = [m.name for m in plan.load]
    assert names == [
        "virtio_ring",
        "virtio",
        "virtio_mmio",
        "virtio_blk",
        "virtio_console",
        "failover",
        "net_failover",
        "virtio_net",
        "button",
        "virtio_rng",
    ]
    assert set(plan.builtin) == {"ext4", "evdev"}
    assert plan.absent == ("vmw_vsock_virtio_transport",)
    assert plan.load[-1] == KernelModule("virtio_rng", "kernel/drivers/char/hw_random/virtio-rng.ko.xz")


def test_plan_nothing_when_all_builtin() -> None:
    config = {need.config: "y" for need in NEEDS}
    plan = plan_modules(config, {})
    assert plan.load == () and len(plan.builtin) == len(NEEDS)


def test_missing_required_driver_is_unavailable() -> None:
    config = parse_kconfig(CONFIG)
    del config["CONFIG_VIRTIO_BLK"]
    with pytest.raises(Unavailable, match="CONFIG_VIRTIO_BLK"):
        plan_modules(config, parse_modules_dep(DEP))
    with pytest.raises(Unavailable, match=r"missing from modules\.dep"):
        plan_modules({"CONFIG_VIRTIO_MMIO": "m"}, {}, needs=(ModuleNeed("virtio_mmio", "CONFIG_VIRTIO_MMIO", True),))


def test_softdeps_load_first() -> None:
    deps = parse_modules_dep(
        "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\nkernel/fs/jbd2/jbd2.ko:\nkernel/crypto/crc32c_generic.ko:\n"
    )
    soft = parse_softdeps("# comment\nsoftdep ext4 pre: crc32c-generic post: nothing\n")
    assert soft == {"ext4": ("crc32c_generic",)}
    plan = plan_modules({"CONFIG_EXT4_FS": "m"}, deps, soft, needs=(ModuleNeed("ext4", "CONFIG_EXT4_FS", True),))
    assert [m.name for m in plan.load] == ["crc32c_generic", "jbd2", "ext4"]


def test_dependency_cycles_terminate() -> None:
    deps = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n")
    plan = plan_modules({"CONFIG_A": "m"}, deps, needs=(ModuleNeed("a", "CONFIG_A", True),))
    assert [m.name for m in plan.load] == ["b", "a"]


def test_read_module_decompresses(tmp_path: Path) -> None:
    elf = b"\x7fELF" + b"module" * 100
    (tmp_path / "a.ko").write_bytes(elf)
    (tmp_path / "b.ko.xz").write_bytes(lzma.compress(elf))
    (tmp_path / "c.ko.gz").write_bytes(gzip.compress(elf))
    for name in ("a.ko", "b.ko.xz", "c.ko.gz"):
        assert read_module(tmp_path, KernelModule(module_name(name), name)) == elf
