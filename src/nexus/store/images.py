"""SQLite repository of built images.

An image under the state dir (``root``) is stored by its path relative to it, so a state dir moved elsewhere
keeps its images; one elsewhere (or rows written before this) by its absolute path."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

from nexus.domain import Conflict, Image, ImageOrigin, NotFound


class ImageRepo:
    def __init__(self, conn: sqlite3.Connection, root: Path | None = None) -> None:
        self._conn = conn
        self._root = root

    def insert(self, image: Image) -> None:
        try:
            self._conn.execute(
                "INSERT INTO images (id, name, base, path, size_mib, sha256, init_system, agent_version, built_at,"
                " packages, origin_vm_id, origin_vm_name, origin_image) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    image.id,
                    image.name,
                    image.base,
                    str(self._stored(image.path)),
                    image.size_mib,
                    image.sha256,
                    image.init_system,
                    image.agent_version,
                    image.built_at.isoformat(),
                    json.dumps(list(image.packages)),
                    origin.vm_id if (origin := image.origin) else None,
                    origin.vm_name if origin else None,
                    origin.image if origin else None,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"an image named {image.name!r} already exists") from exc

    def get(self, ref: str) -> Image:
        """By exact name or id."""
        row = self._conn.execute("SELECT * FROM images WHERE name = ? OR id = ?", (ref, ref)).fetchone()
        if row is None:
            raise NotFound(f"no image named or with id {ref!r}")
        return self._image(row)

    def find(self) -> list[Image]:
        return [self._image(row) for row in self._conn.execute("SELECT * FROM images ORDER BY name")]

    def users(self, name: str) -> list[str]:
        """Names of the VMs that use the image."""
        return [row[0] for row in self._conn.execute("SELECT name FROM vms WHERE image = ? ORDER BY name", (name,))]

    def delete(self, image_id: str) -> None:
        self._conn.execute("DELETE FROM images WHERE id = ?", (image_id,))

    def _stored(self, path: Path) -> Path:
        if self._root is not None and path.is_relative_to(self._root):
            return path.relative_to(self._root)
        return path

    def _image(self, row: sqlite3.Row) -> Image:
        path = Path(row["path"])
        return Image(
            id=row["id"],
            name=row["name"],
            base=row["base"],
            path=path if path.is_absolute() or self._root is None else self._root / path,
            size_mib=row["size_mib"],
            sha256=row["sha256"],
            init_system=row["init_system"],
            agent_version=row["agent_version"],
            built_at=datetime.fromisoformat(row["built_at"]),
            packages=tuple(json.loads(row["packages"])),
            origin=(
                ImageOrigin(row["origin_vm_id"], row["origin_vm_name"], row["origin_image"] or "")
                if row["origin_vm_id"] is not None
                else None
            ),
        )
