"""Choose the kernel modules an initramfs must load, in dependency order, and read them uncompressed.

The guest needs virtio-mmio (device discovery on ``-M microvm``), virtio-blk + ext4 (the root drive),
virtio-console (the agent's ports); virtio-net, the ACPI power button, evdev (so a userspace acpid sees the
button), virtio-rng and virtio-vsock are loaded when the kernel has them. Whatever the kernel config builds in
(``=y``) is skipped. Dependencies come from depmod's ``modules.dep`` (plus ``pre:`` soft dependencies).
Planning is pure; only :func:`read_module` touches files. Compressed modules (.xz, .gz, .zst) are unpacked here
because busybox ``insmod`` hands the bytes to ``init_module`` as they are.
"""

from __future__ import annotations

import gzip
import lzma
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nexus.domain.errors import Unavailable

_SUFFIX_RE = re.compile(r"\.ko(\.(xz|gz|zst))?$")


@dataclass(frozen=True, slots=True)
class ModuleNeed:
    """A driver the guest wants: its module name, the Kconfig symbol, and whether boot fails without it."""

    name: str
    config: str
    required: bool


NEEDS: tuple[ModuleNeed, ...] = (
    ModuleNeed("virtio_mmio", "CONFIG_VIRTIO_MMIO", True),
    ModuleNeed("virtio_blk", "CONFIG_VIRTIO_BLK", True),
    ModuleNeed("ext4", "CONFIG_EXT4_FS", True),
    ModuleNeed("virtio_console", "CONFIG_VIRTIO_CONSOLE", True),
    ModuleNeed("virtio_net", "CONFIG_VIRTIO_NET", False),
    ModuleNeed("button", "CONFIG_ACPI_BUTTON", False),
    ModuleNeed("evdev", "CONFIG_INPUT_EVDEV", False),
    ModuleNeed("virtio_rng", "CONFIG_HW_RANDOM_VIRTIO", False),
    ModuleNeed("vmw_vsock_virtio_transport", "CONFIG_VIRTIO_VSOCKETS", False),
)


@dataclass(frozen=True, slots=True)
class KernelModule:
    name: str  # normalised: "virtio_rng"
    relpath: str  # as in modules.dep: "kernel/drivers/char/hw_random/virtio-rng.ko"


@dataclass(frozen=True, slots=True)
class ModulePlan:
    """Modules to insert, dependencies first; which needs are built in; which optional ones are absent."""

    load: tuple[KernelModule, ...]
    builtin: tuple[str, ...]
    absent: tuple[str, ...]


def module_name(relpath: str) -> str:
    """``kernel/drivers/char/hw_random/virtio-rng.ko.xz`` → ``virtio_rng`` (the kernel treats - and _ alike)."""
    return _SUFFIX_RE.sub("", relpath.rsplit("/", 1)[-1]).replace("-", "_")


def parse_kconfig(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` lines → {"CONFIG_X": "y"}; "is not set" lines and comments are skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value.strip()
    return values


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """depmod's ``modules.dep`` → {module name: (its relpath, then the relpaths it depends on)}."""
    table: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            table[module_name(path.strip())] = (path.strip(), *deps.split())
    return table


def parse_softdeps(text: str) -> dict[str, tuple[str, ...]]:
    """``softdep ext4 pre: crc16 mbcache post: x`` → {"ext4": ("crc16", "mbcache")} (only ``pre:``)."""
    table: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        pre: list[str] = []
        mode = ""
        for word in words[2:]:
            if word.endswith(":"):
                mode = word
            elif mode == "pre:":
                pre.append(word.replace("-", "_"))
        table[words[1].replace("-", "_")] = tuple(pre)
    return table


def plan_modules(
    config: Mapping[str, str],
    deps: Mapping[str, tuple[str, ...]],
    softdeps: Mapping[str, tuple[str, ...]] | None = None,
    needs: tuple[ModuleNeed, ...] = NEEDS,
) -> ModulePlan:
    """Decide what to load. Raises Unavailable when a required driver is neither built in nor a module."""
    soft = softdeps or {}
    order: list[KernelModule] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in chain or name not in deps:
            return
        relpath, *hard = deps[name]
        for pre in soft.get(name, ()):
            visit(pre, (*chain, name))
        for dep in hard:
            visit(module_name(dep), (*chain, name))
        seen.add(name)
        order.append(KernelModule(name, relpath))

    builtin: list[str] = []
    absent: list[str] = []
    for need in needs:
        state = config.get(need.config, "")
        if state == "y":
            builtin.append(need.name)
        elif state == "m" and need.name in deps:
            visit(need.name, ())
        elif need.required:
            how = "a module missing from modules.dep" if state == "m" else "not enabled"
            raise Unavailable(f"the kernel cannot boot a Nexus guest: {need.config} is {how}")
        else:
            absent.append(need.name)
    return ModulePlan(tuple(order), tuple(builtin), tuple(absent))


def plan_for(config_path: Path, modules_dir: Path) -> ModulePlan:
    """:func:`plan_modules` for a kernel's config file and depmod'ed modules directory."""
    softdep_file = modules_dir / "modules.softdep"
    return plan_modules(
        parse_kconfig(config_path.read_text()),
        parse_modules_dep((modules_dir / "modules.dep").read_text()),
        parse_softdeps(softdep_file.read_text()) if softdep_file.is_file() else {},
    )


def zstd_decompress_argv(path: Path) -> list[str]:
    return ["zstd", "-q", "-d", "-c", str(path)]


def read_module(modules_dir: Path, module: KernelModule) -> bytes:
    """The module's ELF bytes, decompressed (xz/gz in-process; zstd with the ``zstd`` tool, absent from 3.11's
    standard library)."""
    path = modules_dir / module.relpath
    raw = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(raw)
    if path.suffix == ".gz":
        return gzip.decompress(raw)
    if path.suffix == ".zst":
        if shutil.which("zstd") is None:
            raise Unavailable(
                f"{path.name} is zstd-compressed and the zstd tool is not installed (apt-get install zstd)"
            )
        done = subprocess.run(zstd_decompress_argv(path), capture_output=True, check=False, timeout=120)
        if done.returncode != 0:
            raise Unavailable(f"cannot decompress {path.name}: {done.stderr.decode(errors='replace').strip()}")
        return done.stdout
    return raw
