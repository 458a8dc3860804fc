"""Build a bootable Nexus image: base tree → agent + its init service + metadata → ext4 file.

Steps (each reported through ``progress(stage, fraction)``): make the base tree, with the packages asked for
(:mod:`nexus.images.bases`),
check it has python3, install the agent (:mod:`nexus.images.agentinstall`) and its service
(:mod:`nexus.images.initsys`), write ``/etc/hostname`` and ``/etc/nexus/image.json``, then ``mke2fs -d``
(:mod:`nexus.images.ext4`), hash the file, and move ``<name>.ext4`` + ``<name>.json`` into ``out_dir``.
Work happens in a temp dir inside ``out_dir`` that is removed whatever happens; the image appears atomically.
Needs root (debootstrap, and files in the image must keep their owners).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from nexus.assets.digest import sha256_file
from nexus.assets.tools import require_tool, run_tool
from nexus.domain.errors import Conflict, Invalid, Unavailable
from nexus.images import ext4, manifest, rootfs
from nexus.images.agentinstall import LAUNCHER, install_agent
from nexus.images.bases import BaseMaker
from nexus.images.guestinfo import guest_python
from nexus.images.initsys import install_agent_service
from nexus.images.manifest import Image
from nexus.images.pycompile import compile_stdlib

Progress = Callable[[str, float], None]

BUILDER_VERSION = "1"
DEFAULT_CACHE_DIR = Path("/var/cache/nexus")
GUEST_HOSTNAME = "nexus"
MIN_SIZE_MIB = 64
DEFAULT_SIZE_MIB = 1024
SIZE_STEP_MIB = 256
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def _no_progress(_stage: str, _fraction: float) -> None:
    return None


def check_request(name: str, size_mib: int | None) -> None:
    if not _NAME_RE.match(name):
        raise Invalid(f"image name {name!r} must be 1-63 of a-z 0-9 . _ - (starting with a letter or digit)")
    if size_mib is not None and size_mib < MIN_SIZE_MIB:
        raise Invalid(f"image size must be at least {MIN_SIZE_MIB} MiB, got {size_mib}")


def default_size_mib(needed_mib: int) -> int:
    """The size of an image whose files need ``needed_mib``: twice that, so a VM starts with at least as much
    free (a dev image has room to work), never under :data:`DEFAULT_SIZE_MIB`, in steps of 256 MiB. The file is
    sparse: the free part costs no disk."""
    return max(DEFAULT_SIZE_MIB, -(-2 * needed_mib // SIZE_STEP_MIB) * SIZE_STEP_MIB)


def build_image(
    base: str,
    name: str,
    size_mib: int | None,
    out_dir: Path,
    agent_src: Path,
    progress: Progress | None = None,
    *,
    sha256: str | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    busybox: Path | None = None,
    replace: bool = False,
    packages: tuple[str, ...] = (),
) -> Image:
    """Build ``<out_dir>/<name>.ext4`` from ``base`` ("debian-bookworm", or a tarball path/URL with ``sha256``)
    with the agent package found at ``agent_src`` (the ``nexus`` package directory) and ``packages`` (checked
    Debian package names, a debian base only). ``size_mib`` None: :func:`default_size_mib`."""
    report = progress or _no_progress
    check_request(name, size_mib)
    if os.geteuid() != 0:
        raise Unavailable("building an image needs root (debootstrap; files must keep their owners)")
    require_tool("mke2fs", "e2fsprogs")
    out_dir = Path(out_dir)
    final = out_dir / f"{name}{manifest.IMAGE_SUFFIX}"
    if final.exists() and not replace:
        raise Conflict(f"image {name} already exists at {final}")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=out_dir))
    try:
        tree = work / "root"
        tree.mkdir(mode=0o755)
        report("base", 0.0)
        base_info = BaseMaker(cache_dir).make(base, tree, sha256, report, packages)
        python = guest_python(tree)
        if python is None:
            raise Invalid(f"base {base} has no /usr/bin/python3; the Nexus agent needs Python 3")
        report("agent", 0.0)
        agent_version = install_agent(tree, Path(agent_src), python.minor)
        report("compile stdlib", 0.0)
        compile_stdlib(tree, python.minor)
        init_system = install_agent_service(tree, LAUNCHER, busybox)
        rootfs.write_file(tree, "/etc/hostname", GUEST_HOSTNAME + "\n")
        built_at = datetime.now(UTC).replace(microsecond=0)
        used, inodes = ext4.tree_usage(tree)
        needed = ext4.min_size_mib(used + 4096, inodes + 1)  # and the manifest (one block), which holds the size
        size_mib = default_size_mib(needed) if size_mib is None else size_mib
        draft = Image(
            id=manifest.image_id(name, base_info.digest, agent_version, built_at),
            name=name,
            base=base_info.label,
            path=final,
            size_mib=size_mib,
            sha256="",
            init_system=init_system.value,
            built_at=built_at,
            agent_version=agent_version,
            python_version=python.version,
            packages=base_info.packages,
        )
        rootfs.write_file(tree, manifest.GUEST_MANIFEST, manifest.guest_manifest(draft, BUILDER_VERSION))
        if size_mib < needed:
            raise Invalid(f"image {name} needs at least {needed} MiB for its files; asked for {size_mib} MiB")
        report("ext4", 0.0)
        staged = work / final.name
        run_tool(ext4.mke2fs_argv(tree, staged, size_mib), what=f"make the ext4 filesystem of {name}", timeout_s=1800)
        report("checksum", 0.0)
        image = dataclasses.replace(draft, sha256=sha256_file(staged))
        sidecar = work / f"{name}{manifest.SIDECAR_SUFFIX}"
        sidecar.write_text(manifest.sidecar(image))
        os.replace(staged, final)
        os.replace(sidecar, out_dir / sidecar.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("done", 1.0)
    return image
