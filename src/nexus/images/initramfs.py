"""Build the Nexus initramfs for a kernel (gzip'd newc cpio, written in Python) and cache it next to the kernel.

Contents: a static busybox with the applet links /init uses, /dev/console, the modules the kernel lacks built in
(uncompressed, see :mod:`nexus.images.kmods`) and the /init script (:mod:`nexus.images.initscript`).
The cached file ``<kernel dir>/initramfs-nexus.img`` is rebuilt whenever its build key changes: the key hashes
the builder version, the /init text, the busybox binary, the kernel and the module list.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nexus.assets.digest import sha256_file
from nexus.domain.models import Kernel
from nexus.images import cpio, kmods
from nexus.images.busybox import find_static_busybox
from nexus.images.initscript import MODULES_PATH, module_file, render_init

BUILDER_VERSION = "1"
IMAGE_NAME = "initramfs-nexus.img"
META_NAME = "initramfs-nexus.json"
APPLETS = (
    "sh",
    "cat",
    "dmesg",
    "echo",
    "findfs",
    "insmod",
    "ip",
    "ls",
    "mount",
    "poweroff",
    "sleep",
    "switch_root",
    "sync",
    "tail",
    "umount",
    "usleep",
)
_DIRS = ("bin", "dev", "lib", MODULES_PATH, "newroot", "proc", "run", "sys", "tmp")


@dataclass(frozen=True, slots=True)
class Initramfs:
    path: Path
    kernel_version: str
    sha256: str
    size_bytes: int
    modules: tuple[str, ...]
    build_key: str


@dataclass(frozen=True, slots=True)
class _Recipe:
    """Everything the archive is made from, decided before any byte is read."""

    init_text: str
    plan: kmods.ModulePlan
    busybox: Path
    key: str


def initramfs_entries(init_text: str, busybox: bytes, modules: Sequence[tuple[str, bytes]]) -> list[cpio.CpioEntry]:
    """The archive members, parents first. ``modules`` pairs an in-archive path (``/lib/modules/x.ko``) with bytes."""
    entries = [cpio.directory(d) for d in _DIRS]
    entries.append(cpio.char_device("dev/console", 5, 1))
    entries.append(cpio.regular("bin/busybox", busybox, 0o755))
    entries += [cpio.symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [cpio.regular(path.lstrip("/"), data) for path, data in modules]
    entries.append(cpio.regular("init", init_text.encode(), 0o755))
    return entries


def _recipe(kernel: Kernel, busybox: Path | None) -> _Recipe:
    plan = kmods.plan_for(kernel.config, kernel.modules_dir)
    required = [need.name for need in kmods.NEEDS if need.required]
    init_text = render_init(plan.load, required)
    binary = busybox or find_static_busybox()
    key = hashlib.sha256(
        "\n".join(
            [
                BUILDER_VERSION,
                kernel.version,
                kernel.sha256,
                sha256_file(binary),
                init_text,
                *(m.relpath for m in plan.load),
            ]
        ).encode()
    ).hexdigest()
    return _Recipe(init_text, plan, binary, key)


def _build(kernel: Kernel, recipe: _Recipe, out: Path) -> Initramfs:
    modules = [(module_file(m), kmods.read_module(kernel.modules_dir, m)) for m in recipe.plan.load]
    archive = cpio.newc_archive(initramfs_entries(recipe.init_text, recipe.busybox.read_bytes(), modules))
    blob = gzip.compress(archive, compresslevel=6, mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.chmod(tmp, 0o644)  # like the vmlinux: a jailed Firecracker (another uid) opens it too; nothing secret
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Initramfs(
        out,
        kernel.version,
        hashlib.sha256(blob).hexdigest(),
        len(blob),
        tuple(m.name for m in recipe.plan.load),
        recipe.key,
    )


def build_initramfs(kernel: Kernel, out: Path, busybox: Path | None = None) -> Initramfs:
    """Build the initramfs for ``kernel`` into ``out`` (atomically replaced). No caching."""
    return _build(kernel, _recipe(kernel, busybox), out)


def ensure_initramfs(kernel: Kernel, busybox: Path | None = None) -> Initramfs:
    """The cached initramfs of ``kernel``, rebuilt first if missing or built from different inputs."""
    recipe = _recipe(kernel, busybox)
    image, meta_path = kernel.dir / IMAGE_NAME, kernel.dir / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
        if meta["build_key"] == recipe.key and image.is_file() and image.stat().st_size == meta["size_bytes"]:
            return Initramfs(
                image, kernel.version, str(meta["sha256"]), int(meta["size_bytes"]), tuple(meta["modules"]), recipe.key
            )
    except (OSError, ValueError, KeyError, TypeError):
        pass
    built = _build(kernel, recipe, image)
    meta = {
        "build_key": built.build_key,
        "builder_version": BUILDER_VERSION,
        "sha256": built.sha256,
        "size_bytes": built.size_bytes,
        "modules": list(built.modules),
        "kernel_version": kernel.version,
    }
    tmp = meta_path.with_name(f".{META_NAME}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, meta_path)
    return built
