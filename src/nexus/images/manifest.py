"""Image metadata: the :class:`Image` value object, the in-guest ``/etc/nexus/image.json`` and the sidecar
``<name>.json`` written next to each ``<name>.ext4``, and reading them back.

The image id is derived with SHA-256 from the name, the base's digest, the agent version and the build time,
so it is known before the filesystem is made (it has to go inside it) and unique per build.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nexus.domain.models import ImageOrigin

GUEST_MANIFEST = "/etc/nexus/image.json"
SIDECAR_SUFFIX = ".json"
IMAGE_SUFFIX = ".ext4"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Image:
    id: str
    name: str
    base: str
    path: Path
    size_mib: int
    sha256: str
    init_system: str
    built_at: datetime
    agent_version: str = ""
    python_version: str = ""
    packages: tuple[str, ...] = ()
    origin: ImageOrigin | None = None


def image_id(name: str, base_digest: str, agent_version: str, built_at: datetime) -> str:
    text = "\n".join((name, base_digest, agent_version, built_at.isoformat()))
    return "img-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def guest_manifest(image: Image, builder_version: str) -> str:
    """``/etc/nexus/image.json`` (no path/sha256: the file cannot hold its own digest)."""
    return (
        json.dumps(
            {
                "format": _FORMAT,
                "id": image.id,
                "name": image.name,
                "base": image.base,
                "built_at": image.built_at.isoformat(),
                "init_system": image.init_system,
                "agent_version": image.agent_version,
                "python_version": image.python_version,
                "builder_version": builder_version,
                "packages": list(image.packages),
                "origin": origin_fields(image.origin),
            },
            indent=2,
        )
        + "\n"
    )


def sidecar(image: Image) -> str:
    return (
        json.dumps(
            {
                "format": _FORMAT,
                "id": image.id,
                "name": image.name,
                "base": image.base,
                "file": image.path.name,
                "size_mib": image.size_mib,
                "sha256": image.sha256,
                "init_system": image.init_system,
                "built_at": image.built_at.isoformat(),
                "agent_version": image.agent_version,
                "python_version": image.python_version,
                "packages": list(image.packages),
                "origin": origin_fields(image.origin),
            },
            indent=2,
        )
        + "\n"
    )


def origin_fields(origin: ImageOrigin | None) -> dict[str, str] | None:
    return None if origin is None else {"vm_id": origin.vm_id, "vm_name": origin.vm_name, "image": origin.image}


def origin_of(data: Any) -> ImageOrigin | None:
    """The origin ``origin_fields`` wrote (None for a built image, or one written before origins were)."""
    if not isinstance(data, dict):
        return None
    return ImageOrigin(str(data["vm_id"]), str(data["vm_name"]), str(data.get("image", "")))


def read_sidecar(path: Path) -> Image | None:
    """The image a sidecar describes, or None if it is unreadable or its ext4 file is gone."""
    try:
        data = json.loads(path.read_text())
        image = Image(
            id=str(data["id"]),
            name=str(data["name"]),
            base=str(data["base"]),
            path=path.with_name(str(data["file"])),
            size_mib=int(data["size_mib"]),
            sha256=str(data["sha256"]),
            init_system=str(data["init_system"]),
            built_at=datetime.fromisoformat(str(data["built_at"])),
            agent_version=str(data.get("agent_version", "")),
            python_version=str(data.get("python_version", "")),
            packages=tuple(str(p) for p in data.get("packages", [])),
            origin=origin_of(data.get("origin")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return image if image.path.is_file() else None


def list_images(out_dir: Path) -> list[Image]:
    """Every built image in ``out_dir``, by name."""
    if not out_dir.is_dir():
        return []
    found = [image for p in sorted(out_dir.glob(f"*{SIDECAR_SUFFIX}")) if (image := read_sidecar(p))]
    return sorted(found, key=lambda image: image.name)
