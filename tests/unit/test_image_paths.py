"""Images under the state dir are stored relative to it: a state dir moved elsewhere keeps its images."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from nexus.domain import Image
from nexus.store import ImageRepo, open_database


def _image(name: str, path: Path) -> Image:
    return Image(name, name, "debian-bookworm", path, 64, "0" * 64, "busybox", "0.1.0", datetime.now(UTC))


def test_a_moved_state_dir_keeps_its_images(tmp_path: Path) -> None:
    state = tmp_path / "state"
    conn = open_database(state / "nexus.db")
    inside = state / "images" / "web" / "web.ext4"
    elsewhere = tmp_path / "elsewhere.ext4"
    ImageRepo(conn, state).insert(_image("web", inside))
    ImageRepo(conn, state).insert(_image("other", elsewhere))
    stored = dict(conn.execute("SELECT name, path FROM images").fetchall())
    assert stored == {"web": "images/web/web.ext4", "other": str(elsewhere)}
    assert ImageRepo(conn, state).get("web").path == inside
    conn.close()
    moved = tmp_path / "moved"
    shutil.move(state, moved)
    conn = open_database(moved / "nexus.db")
    assert ImageRepo(conn, moved).get("web").path == moved / "images" / "web" / "web.ext4"
    assert ImageRepo(conn, moved).get("other").path == elsewhere
    conn.close()
