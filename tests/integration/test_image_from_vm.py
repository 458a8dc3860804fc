"""``POST /v1/images`` with ``from_vm`` through a real nexusd whose VMM is the fake Firecracker (a real agent on the
host, no kernel): the refusals (unknown VM, never started, running, bad or taken name, from_vm with build options)
change nothing; a stopped VM's root drive becomes a sealed image with the current agent and its origin; a VM
created from that image gets the source VM's changes in its own root drive; removing the source VM leaves the
image intact, and the image cannot be removed while a VM uses it.

The image the VMs start from is a small real ext4 holding a Nexus manifest (the fake never reads it); the
"changes" are written into the stopped VM's root drive with debugfs, as a guest would have left them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus.domain import Conflict, Invalid, InvalidState, Layout, NexusError, NotFound
from nexus.images import ext4edit
from nexus.store import open_database
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import FIRECRACKER_SKIPS, firecracker_daemon, prepare_state

pytestmark = [
    *FIRECRACKER_SKIPS,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("debugfs") is None, reason="needs root and e2fsprogs"),
]

MANIFEST = {
    "format": 1,
    "id": "img-stub",
    "name": "debian-bookworm",
    "base": "debian-bookworm",
    "built_at": "2026-01-01T00:00:00+00:00",
    "init_system": "busybox",
    "agent_version": "0.0.1",
    "python_version": "3.11.2",
    "builder_version": "1",
}


@pytest.fixture
def base() -> Iterator[Path]:
    """A short base dir: the VM's vsock socket paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="nxim-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _real_stub_image(state: Path) -> None:
    """Make the stub image of ``prepare_state`` a 64 MiB ext4 with a Nexus manifest."""
    tree = state.parent / "tree"
    (tree / "etc" / "nexus").mkdir(parents=True)
    (tree / "etc" / "nexus" / "image.json").write_text(json.dumps(MANIFEST))
    image = state / "images" / "stub.ext4"
    image.unlink()
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "64M"], check=True)
    conn = open_database(state / "nexus.db")
    try:
        conn.execute("UPDATE images SET size_mib = 64 WHERE id = 'img-stub'")
    finally:
        conn.close()


def _from_vm(api: NexusClient, **fields: Any) -> dict[str, Any]:
    events = list(api.build_image(**fields))
    result: dict[str, Any] = events[-1]["result"]
    return result


def _root_drive(api: NexusClient, layout: Layout, vm: str) -> Path:
    [drive] = [d for d in api.list_drives() if d["name"] == f"{vm}.root"]
    return layout.drive_file(drive["id"])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_stopped_vm_s_root_drive_becomes_an_image(base: Path) -> None:
    state = prepare_state(base)
    _real_stub_image(state)
    layout = Layout(state_dir=state, runtime_dir=base / "run")
    daemon = firecracker_daemon(base)
    try:
        with NexusClient(daemon.socket, timeout_s=60) as api:
            before = api.list_images()
            api.create_vm(name="src", mem_mib=256)
            refusals: list[tuple[dict[str, Any], type[NexusError], str]] = [
                ({"from_vm": "nope", "name": "saved"}, NotFound, "nope"),
                ({"from_vm": "src", "name": "saved"}, InvalidState, "no root drive yet"),
                ({"from_vm": "src", "name": "Bad Name"}, Invalid, "invalid name"),
                ({"from_vm": "src", "name": "debian-bookworm"}, Conflict, "already exists"),
                ({"from_vm": "src", "packages": ["git"]}, Invalid, "packages cannot go with it"),
                ({"from_vm": "src", "base": "debian-bookworm"}, Invalid, "base cannot go with it"),
            ]
            for fields, error, message in refusals:
                with pytest.raises(error, match=message):
                    _from_vm(api, **fields)
            assert api.start_vm("src")["state"] == "ready"
            with pytest.raises(InvalidState, match="VM src is ready; stop it"):
                _from_vm(api, from_vm="src", name="saved")
            assert api.list_images() == before
            assert sorted(p.name for p in layout.images_dir.iterdir()) == ["stub.ext4"]

            api.stop_vm("src")
            src_root = _root_drive(api, layout, "src")
            work = base / "work.txt"
            work.write_text("written in the source VM\n")
            subprocess.run(["debugfs", "-w", "-R", f"write {work} /work.txt", str(src_root)], check=True)
            src_digest = _digest(src_root)

            image = _from_vm(api, from_vm="src", name="saved")
            src_id = api.get_vm("src")["id"]
            assert image["origin"] == {"vm_id": src_id, "vm_name": "src", "image": "debian-bookworm"}
            assert (image["name"], image["base"], image["init_system"], image["size_mib"]) == (
                "saved",
                "debian-bookworm",
                "busybox",
                64,
            )
            assert image["agent_version"] == __import__("nexus").__version__
            assert api.get_image("saved") == image
            path = Path(image["path"])
            assert _digest(path) == image["sha256"]
            assert path.stat().st_mode & 0o222 == 0  # sealed: read-only (a directory backend: 0444)
            assert _digest(src_root) == src_digest  # the VM's own drive is untouched
            assert not [p for p in layout.images_dir.iterdir() if p.name.startswith(".")]  # no leftovers

            # a VM made from the image starts with the source VM's changes, and the new agent's manifest
            api.create_vm(name="dst", mem_mib=256, image="saved")
            assert api.start_vm("dst")["state"] == "ready"
            api.stop_vm("dst")
            dst_root = _root_drive(api, layout, "dst")
            assert ext4edit.cat(dst_root, "/work.txt") == b"written in the source VM\n"
            inside = json.loads(ext4edit.cat(dst_root, "/etc/nexus/image.json") or b"{}")
            assert (inside["id"], inside["origin"]["vm_name"]) == (image["id"], "src")

            # the source VM goes; the image stays as it was
            api.remove_vm("src")
            assert api.get_image("saved") == image and _digest(path) == image["sha256"]
            # the image stays while a VM uses it
            with pytest.raises(Conflict, match="used by VM"):
                api.remove_image("saved")
            api.remove_vm("dst")
            api.remove_image("saved")
            assert not path.exists()
            assert [i["name"] for i in api.list_images()] == ["debian-bookworm"]
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
