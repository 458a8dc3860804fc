"""Seal a copy of a stopped VM's root drive as an image, the way :mod:`nexus.images.builder` seals a built one.

The copy (made by the caller with the storage backend: a reflink, a sparse copy or a btrfs clone) gets its
journal replayed and safe fixes by ``e2fsck -fp``, then the current agent and its launchers (so an image saved
from an old VM runs the agent of this nexusd, like every built image) and a new ``/etc/nexus/image.json`` naming
the image and where it came from, written with :mod:`nexus.images.ext4edit` and read back to check. What else is
in the drive is kept as the VM left it. Then ``e2fsck -fn``, the checksum and the sidecar, and the file is moved
to ``<name>.ext4`` beside the sidecar. The base, init system, Python and packages are those the drive's own
manifest records: the drive was made from a Nexus image, whatever has become of that image since.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nexus.assets.digest import sha256_file
from nexus.domain.errors import Conflict, Invalid, Unavailable
from nexus.domain.models import ImageOrigin
from nexus.images import ext4edit, manifest, rootfs
from nexus.images.agentinstall import AGENT_LIB, install_agent
from nexus.images.builder import BUILDER_VERSION, check_request
from nexus.images.manifest import Image

Progress = Callable[[str, float], None]

AGENT_DIR = f"{AGENT_LIB}/nexus"
MIB = 1 << 20


def _no_progress(_stage: str, _fraction: float) -> None:
    return None


def read_manifest(drive: Path) -> dict[str, Any]:
    """The drive's ``/etc/nexus/image.json``; Invalid when it has none (not made from a Nexus image)."""
    raw = ext4edit.cat(drive, manifest.GUEST_MANIFEST)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("id", "base", "init_system")):
        raise Invalid(f"the root drive has no readable {manifest.GUEST_MANIFEST}: it was not made from a Nexus image")
    return data


def seal_copy(
    copy: Path,
    name: str,
    origin: ImageOrigin,
    out_dir: Path,
    agent_src: Path,
    progress: Progress | None = None,
) -> Image:
    """Make ``copy`` (an ext4 file in ``out_dir`` nothing else uses) the image ``<out_dir>/<name>.ext4`` with its
    sidecar. ``copy`` is moved there, or removed when anything fails."""
    report = progress or _no_progress
    final = out_dir / f"{name}{manifest.IMAGE_SUFFIX}"
    work = Path(tempfile.mkdtemp(prefix=f".seal-{name}-", suffix=".part", dir=out_dir))  # ".part": see recover
    try:
        check_request(name, None)
        if final.exists():
            raise Conflict(f"image {name} already exists at {final}")
        report("check filesystem", 0.0)
        ext4edit.fsck_repair(copy)
        old = read_manifest(copy)
        python_version = str(old.get("python_version", ""))
        minor = ".".join(python_version.split(".")[:2]) or None
        stage = work / "root"
        stage.mkdir(mode=0o755)
        report("agent", 0.0)
        agent_version = install_agent(stage, agent_src, minor)
        built_at = datetime.now(UTC).replace(microsecond=0)
        image = Image(
            id=manifest.image_id(name, f"{origin.vm_id}/{old['id']}", agent_version, built_at),
            name=name,
            base=old["base"],
            path=final,
            size_mib=copy.stat().st_size // MIB,
            sha256="",
            init_system=old["init_system"],
            built_at=built_at,
            agent_version=agent_version,
            python_version=python_version,
            packages=tuple(str(p) for p in old.get("packages", [])),
            origin=origin,
        )
        rootfs.write_file(stage, manifest.GUEST_MANIFEST, manifest.guest_manifest(image, BUILDER_VERSION))
        ext4edit.replace_files(copy, stage, AGENT_DIR)
        _check_written(copy, stage)
        ext4edit.fsck_check(copy)
        report("checksum", 0.0)
        image = dataclasses.replace(image, sha256=sha256_file(copy))
        sidecar = work / f"{name}{manifest.SIDECAR_SUFFIX}"
        sidecar.write_text(manifest.sidecar(image))
        os.replace(copy, final)
        os.replace(sidecar, out_dir / sidecar.name)
    except BaseException:
        copy.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("done", 1.0)
    return image


def _check_written(image: Path, stage: Path) -> None:
    """Read back what :func:`ext4edit.replace_files` wrote: the agent directory holds exactly the staged files
    (no file of an older agent left), and every other staged file has the staged bytes."""
    staged_agent = rootfs.resolve_in_root(stage, AGENT_DIR)
    want = {
        (f"{AGENT_DIR}/{p.relative_to(staged_agent).as_posix()}", p.stat().st_size)
        for p in staged_agent.rglob("*")
        if p.is_file()
    }
    got = {(e.path, e.size) for e in ext4edit.listing(image, AGENT_DIR) or [] if not e.is_dir}
    if got != want:
        raise Unavailable(f"installing the agent into {image.name} did not take: {sorted(got ^ want)[:5]}")
    for path in stage.rglob("*"):
        if path.is_file() and not path.is_relative_to(staged_agent):
            guest = "/" + path.relative_to(stage).as_posix()
            if ext4edit.cat(image, guest) != path.read_bytes():
                raise Unavailable(f"writing {guest} into {image.name} did not take")
