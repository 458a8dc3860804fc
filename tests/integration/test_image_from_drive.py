"""Sealing a copy of a VM's root drive as an image, on real ext4 files (mke2fs, debugfs, e2fsck; no VM): the
current agent replaces the old one file for file, the manifest names the new image and its origin, the rest of
the drive is kept, and a drive that is not a Nexus image, or whose agent directory holds a name that could
smuggle a debugfs command, is refused with the copy removed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nexus.domain import ImageOrigin
from nexus.domain.errors import Conflict, Invalid
from nexus.images import ext4edit, manifest
from nexus.images.fromdrive import AGENT_DIR, seal_copy
from tests.helpers import REPO

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("debugfs") is None, reason="needs root and e2fsprogs (mke2fs, debugfs)"
)

AGENT_SRC = REPO / "src" / "nexus"
ORIGIN = ImageOrigin(vm_id="a1b2c3d4e5f6", vm_name="web", image="debian-bookworm")
OLD_MANIFEST = {
    "format": 1,
    "id": "img-old",
    "name": "debian-bookworm",
    "base": "debian-bookworm",
    "built_at": "2026-01-01T00:00:00+00:00",
    "init_system": "busybox",
    "agent_version": "0.0.1",
    "python_version": "3.11.2",
    "builder_version": "1",
    "packages": ["git"],
}


def make_drive(
    tmp_path: Path, guest_manifest: dict[str, object] | None = OLD_MANIFEST, evil_name: str | None = None
) -> Path:
    """A 64 MiB ext4 like a VM left it: an old agent (with a module the new one lacks), the VM's own work."""
    tree = tmp_path / "tree"
    old_agent = tree / AGENT_DIR.lstrip("/")
    (old_agent / "agent").mkdir(parents=True)
    (old_agent / "__init__.py").write_text('__version__ = "0.0.1"\n')
    (old_agent / "agent" / "gone_in_new_versions.py").write_text("OLD = True\n")
    if evil_name is not None:
        (old_agent / "agent" / evil_name).write_text("x")
    (tree / "usr" / "local" / "bin").mkdir(parents=True)
    (tree / "usr" / "local" / "bin" / "nexus-agent").write_text("#!/bin/sh\nold launcher\n")
    (tree / "root").mkdir()
    (tree / "root" / "work.txt").write_text("the VM's own work\n")
    if guest_manifest is not None:
        (tree / "etc" / "nexus").mkdir(parents=True)
        (tree / "etc" / "nexus" / "image.json").write_text(json.dumps(guest_manifest))
    drive = tmp_path / "images" / ".saved.from-vm.part"
    drive.parent.mkdir()
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(drive), "64M"], check=True)
    return drive


def test_the_copy_becomes_an_image_with_the_current_agent(tmp_path: Path) -> None:
    drive = make_drive(tmp_path)
    stages: list[str] = []
    image = seal_copy(drive, "saved", ORIGIN, drive.parent, AGENT_SRC, lambda s, _f: stages.append(s))
    final = drive.parent / "saved.ext4"
    assert image.path == final and final.is_file() and not drive.exists()
    assert (image.name, image.base, image.init_system, image.packages) == (
        "saved",
        "debian-bookworm",
        "busybox",
        ("git",),
    )
    assert image.origin == ORIGIN and image.size_mib == 64 and image.python_version == "3.11.2"
    assert image.agent_version == __import__("nexus").__version__
    assert stages[0] == "check filesystem" and stages[-1] == "done"
    # the manifest inside names the new image and where it came from
    inside = json.loads(ext4edit.cat(final, manifest.GUEST_MANIFEST) or b"{}")
    assert (inside["id"], inside["name"], inside["agent_version"]) == (image.id, "saved", image.agent_version)
    assert inside["origin"] == {"vm_id": ORIGIN.vm_id, "vm_name": "web", "image": "debian-bookworm"}
    # the agent directory holds exactly this checkout's agent files: the old module is gone
    paths = {e.path for e in ext4edit.listing(final, AGENT_DIR) or []}
    assert f"{AGENT_DIR}/agent/__main__.py" in paths and f"{AGENT_DIR}/protocol/__init__.py" in paths
    assert f"{AGENT_DIR}/agent/gone_in_new_versions.py" not in paths
    assert ext4edit.cat(final, f"{AGENT_DIR}/agent/__main__.py") == (AGENT_SRC / "agent" / "__main__.py").read_bytes()
    assert b"nexus.agent" in (ext4edit.cat(final, "/usr/local/bin/nexus-agent") or b"")
    assert b"nexus.agent.gateway_client" in (ext4edit.cat(final, "/usr/local/bin/nexus-mcp") or b"")
    stat = subprocess.run(
        ["debugfs", "-R", f"stat {AGENT_DIR}/agent/__main__.py", str(final)], capture_output=True, text=True
    ).stdout
    assert "Mode:  0644" in stat and "User:     0   Group:     0" in stat
    # the rest is as the VM left it; the filesystem is clean; the sidecar describes the file as it is
    assert ext4edit.cat(final, "/root/work.txt") == b"the VM's own work\n"
    assert subprocess.run(["e2fsck", "-fn", str(final)], capture_output=True).returncode == 0
    assert manifest.read_sidecar(drive.parent / "saved.json") == image
    assert image.sha256 == __import__("hashlib").sha256(final.read_bytes()).hexdigest()
    assert sorted(p.name for p in drive.parent.iterdir()) == ["saved.ext4", "saved.json"]


def test_a_drive_without_a_nexus_manifest_is_refused_and_the_copy_removed(tmp_path: Path) -> None:
    drive = make_drive(tmp_path, guest_manifest=None)
    with pytest.raises(Invalid, match="not made from a Nexus image"):
        seal_copy(drive, "saved", ORIGIN, drive.parent, AGENT_SRC)
    assert list(drive.parent.iterdir()) == []


def test_a_guest_name_that_could_smuggle_a_debugfs_command_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A newline is legal in a file name: read naively, this one would hold the debugfs command "dump", which
    # writes a file of the image onto the host (here into the current directory).
    monkeypatch.chdir(tmp_path)
    drive = make_drive(tmp_path, evil_name="x\ndump root leaked")
    raw = subprocess.run(["debugfs", "-R", f"ls -p {AGENT_DIR}/agent", str(drive)], capture_output=True).stdout
    assert b"/x\ndump root leaked/" in raw
    with pytest.raises(Invalid, match="unexpected file name"):
        seal_copy(drive, "saved", ORIGIN, drive.parent, AGENT_SRC)
    assert not (tmp_path / "leaked").exists() and list(drive.parent.iterdir()) == []


def test_an_existing_image_file_is_not_overwritten(tmp_path: Path) -> None:
    drive = make_drive(tmp_path)
    (drive.parent / "saved.ext4").write_bytes(b"someone else's")
    with pytest.raises(Conflict):
        seal_copy(drive, "saved", ORIGIN, drive.parent, AGENT_SRC)
    assert (drive.parent / "saved.ext4").read_bytes() == b"someone else's" and not drive.exists()
