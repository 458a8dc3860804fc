"""Drives, snapshots and clones through the REST API (ASGI transport, real SQLite, the copy backend on this
directory, real mke2fs/resize2fs) — everything that needs no running VM; tests/e2e/test_workspaces_e2e.py boots."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_api import _error, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with make_app(tmp_path) as client:
        yield client


def _ext4_size(path: Path) -> int:
    """The filesystem size in bytes from the ext4 superblock (at 1024: s_blocks_count_lo, s_log_block_size)."""
    with path.open("rb") as fh:
        fh.seek(1024)
        sb = fh.read(1024)
    assert struct.unpack_from("<H", sb, 0x38)[0] == 0xEF53
    blocks, log_size = struct.unpack_from("<I", sb, 0x4)[0], struct.unpack_from("<I", sb, 0x18)[0]
    return int(blocks) * (1024 << int(log_size))


async def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


async def test_drives_snapshots_clone_without_booting(api: httpx.AsyncClient, tmp_path: Path) -> None:
    state = tmp_path / "state"
    health = await _ok(await api.get("/v1/health"))
    assert health["storage"]["name"] in ("copy", "reflink")

    drive = await _ok(await api.post("/v1/drives", json={"name": "data", "size_mib": 32}), 201)
    disk = state / "drives" / drive["id"] / "disk.img"
    assert disk.stat().st_size == 32 << 20 and _ext4_size(disk) == 32 << 20
    _error(await api.post("/v1/drives", json={"name": "data", "size_mib": 32}), 409, "conflict")
    _error(await api.post("/v1/drives", json={"name": "both", "size_mib": 32, "image": "x"}), 422, "invalid")
    _error(await api.post("/v1/drives", json={"name": "neither"}), 422, "invalid")
    _error(await api.post("/v1/drives", json={"name": "Bad_Name", "size_mib": 32}), 422, "invalid")
    _error(await api.post("/v1/drives", json={"name": "tiny", "size_mib": 1}), 422, "invalid")
    _error(await api.post("/v1/drives", json={"name": "img", "image": "no-such-image"}), 422, "invalid")
    assert [d["name"] for d in await _ok(await api.get("/v1/drives"))] == ["data"]

    await _ok(await api.post("/v1/vms", json={"name": "web"}), 201)
    _error(await api.post("/v1/vms/web/snapshots", json={}), 409, "invalid_state")  # no drives yet
    _error(await api.post("/v1/drives/data/attach", json={"vm": "web", "mount": "/etc"}), 422, "invalid")
    attached = await _ok(await api.post("/v1/drives/data/attach", json={"vm": "web", "mount": "/data"}))
    assert attached["mount_path"] == "/data" and attached["vm_id"]
    _error(await api.post("/v1/drives/data/attach", json={"vm": "web"}), 409, "conflict")
    message = _error(await api.delete("/v1/drives/data"), 409, "conflict")
    assert "attached to VM web" in message and disk.exists()

    snap = await _ok(await api.post("/v1/vms/web/snapshots", json={"name": "s1"}), 201)
    assert [(d["drive_name"], d["kind"]) for d in snap["drives"]] == [("data", "data")]
    _error(await api.post("/v1/vms/web/snapshots", json={"name": "s1"}), 409, "conflict")
    with disk.open("r+b") as fh:  # the drive changes after the snapshot
        fh.seek(20 << 20)
        fh.write(b"after s1")

    await _ok(await api.post("/v1/drives/data/detach"))
    message = _error(await api.delete("/v1/drives/data"), 409, "conflict")
    assert "web/s1" in message and disk.exists()
    await _ok(await api.post("/v1/vms", json={"name": "other"}), 201)
    await _ok(await api.post("/v1/drives/data/attach", json={"vm": "other"}))
    message = _error(await api.post("/v1/vms/web/snapshots/s1/rollback"), 409, "conflict")
    assert "attached to VM other" in message
    await _ok(await api.post("/v1/drives/data/detach"))

    clone = await _ok(await api.post("/v1/vms/web/clone", json={"name": "web2", "snapshot": "s1"}), 201)
    assert clone["state"] == "created"
    copies = [d for d in await _ok(await api.get("/v1/drives")) if d["vm_id"] == clone["id"]]
    assert [(d["name"], d["mount_path"]) for d in copies] == [("web2-data", "/data")]
    _error(await api.post("/v1/vms/web/clone", json={"name": "web2"}), 409, "conflict")

    rolled = await _ok(await api.post("/v1/vms/web/snapshots/s1/rollback"))
    assert rolled["state"] == "created"
    with disk.open("rb") as fh:
        fh.seek(20 << 20)
        assert fh.read(8) == b"\0" * 8  # as the snapshot held it

    _error(await api.post("/v1/drives/data/resize", json={"size_mib": 16}), 422, "invalid")
    grown = await _ok(await api.post("/v1/drives/data/resize", json={"size_mib": 48}))
    assert grown["size_mib"] == 48 and _ext4_size(disk) == 48 << 20

    await _ok(await api.delete("/v1/vms/web/snapshots/s1"), 204)
    assert list((state / "snapshots").iterdir()) == []
    await _ok(await api.delete("/v1/vms/web2"), 204)  # its data drive stays, detached
    await _ok(await api.delete("/v1/vms/other"), 204)
    kept = await _ok(await api.get("/v1/drives/web2-data"))
    assert kept["vm_id"] is None
    for name in ("data", "web2-data"):
        await _ok(await api.delete(f"/v1/drives/{name}"), 204)
    assert await _ok(await api.get("/v1/drives")) == []
    assert list((state / "drives").iterdir()) == []
