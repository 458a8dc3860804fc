"""Build real images: a tiny one from a tarball, and debian-bookworm with debootstrap (its base is cached under
/var/tmp/nexus-test-cache, or $NEXUS_TEST_CACHE, so only the first run pays the minute of debootstrap). The
``vm`` tests boot the bookworm image under TCG with a stand-in agent, wait for its first line on the control
port, then power it off through QMP and check the filesystem was left clean."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.assets import KernelStore
from nexus.domain.errors import Conflict, Invalid
from nexus.images import Image, build_image, ensure_initramfs, list_images
from nexus.vmm.qemu.argv import Accel, QemuLaunch, SerialPort, qemu_argv
from nexus.vmm.qemu.hostclock import host_tsc_khz

CACHE = Path(os.environ.get("NEXUS_TEST_CACHE", "/var/tmp/nexus-test-cache"))

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mke2fs") is None or not Path("/bin/busybox").exists(),
    reason="image builds need root, e2fsprogs and busybox-static",
)

STANDIN_MAIN = '''"""Stand-in agent: a JSON line every half second on the port named org.nexus.control."""
import json, os, time

def device(name):
    base = "/sys/class/virtio-ports"
    for entry in os.listdir(base):
        with open(f"{base}/{entry}/name") as f:
            if f.read().strip() == name:
                return f"/dev/{entry}"

dev = None
while dev is None:
    dev = device("org.nexus.control") if os.path.isdir("/sys/class/virtio-ports") else None
    time.sleep(0 if dev else 0.1)
fd = os.open(dev, os.O_WRONLY)
seq = 0
while True:
    os.write(fd, (json.dumps({"standin": True, "seq": seq}) + "\\n").encode())
    seq += 1
    time.sleep(0.5)
'''


@pytest.fixture(scope="session")
def agent_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pkg = tmp_path_factory.mktemp("agent") / "nexus"
    (pkg / "agent").mkdir(parents=True)
    (pkg / "protocol").mkdir()
    (pkg / "__init__.py").write_text('__version__ = "0.0.0-standin"\n')
    (pkg / "protocol" / "__init__.py").write_text("")
    (pkg / "agent" / "__init__.py").write_text("")
    (pkg / "agent" / "__main__.py").write_text(STANDIN_MAIN)
    return pkg


def debugfs_cat(image: Path, path: str) -> str:
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=True)
    return done.stdout


def fsck_clean(image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False)


def test_tiny_image_from_a_tarball(tmp_path: Path, agent_src: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "etc").mkdir()
    (tree / "bin").symlink_to("usr/bin")
    (tree / "usr" / "bin" / "python3.11").write_text("#!/bin/false\n")
    (tree / "usr" / "bin" / "python3").symlink_to("python3.11")
    tarball = tmp_path / "rootfs.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tree, arcname=".")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    out = tmp_path / "images"
    stages: list[str] = []
    image = build_image(
        str(tarball),
        "tiny",
        128,
        out,
        agent_src,
        lambda s, f: stages.append(s),
        sha256=digest,
        cache_dir=tmp_path / "cache",
    )
    assert image.path == out / "tiny.ext4" and image.size_mib == 128 and image.base == "rootfs.tar.gz"
    assert image.init_system == "busybox" and image.python_version == "3.11"
    assert image.sha256 == hashlib.sha256(image.path.read_bytes()).hexdigest()
    assert image.path.stat().st_size == 128 << 20
    assert list_images(out) == [image]
    assert sorted(p.name for p in out.iterdir()) == ["tiny.ext4", "tiny.json"]
    meta = json.loads(debugfs_cat(image.path, "/etc/nexus/image.json"))
    assert meta["id"] == image.id and meta["agent_version"] == "0.0.0-standin" and meta["init_system"] == "busybox"
    assert "::respawn:/usr/local/bin/nexus-agent" in debugfs_cat(image.path, "/etc/inittab")
    assert "nexus.agent" in debugfs_cat(image.path, "/usr/local/bin/nexus-agent")
    assert debugfs_cat(image.path, "/opt/nexus/lib/nexus/agent/__main__.py") == STANDIN_MAIN
    assert fsck_clean(image.path).returncode == 0
    assert stages[-1] == "done" and "ext4" in stages
    with pytest.raises(Conflict, match="already exists"):
        build_image(str(tarball), "tiny", 128, out, agent_src, sha256=digest, cache_dir=tmp_path / "cache")
    with pytest.raises(Invalid, match="sha256"):
        build_image(str(tarball), "tiny2", 128, out, agent_src, sha256="0" * 64, cache_dir=tmp_path / "cache")
    assert not list(out.glob(".build-*"))  # failed builds leave nothing


def test_base_without_python_is_refused(tmp_path: Path, agent_src: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    tarball = tmp_path / "nopython.tar"
    with tarfile.open(tarball, "w") as archive:
        archive.add(tree, arcname=".")
    with pytest.raises(Invalid, match="python3"):
        build_image(str(tarball), "nopy", 128, tmp_path / "out", agent_src, cache_dir=tmp_path / "cache")


@pytest.fixture(scope="session")
def bookworm(tmp_path_factory: pytest.TempPathFactory, agent_src: Path) -> Image:
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap not installed")
    return build_image("debian-bookworm", "itest", 1024, tmp_path_factory.mktemp("images"), agent_src, cache_dir=CACHE)


def test_bookworm_image(bookworm: Image) -> None:
    assert bookworm.init_system == "busybox" and bookworm.python_version.startswith("3.11")
    assert fsck_clean(bookworm.path).returncode == 0
    assert debugfs_cat(bookworm.path, "/etc/hostname").strip() == "nexus"
    assert json.loads(debugfs_cat(bookworm.path, "/etc/nexus/image.json"))["id"] == bookworm.id


def connect(path: Path, deadline: float) -> socket.socket:
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def qmp_command(path: Path, command: str) -> dict[str, object]:
    with connect(path, time.monotonic() + 5) as sock:
        sock.settimeout(5)
        stream = sock.makefile("rwb")
        json.loads(stream.readline())
        for execute in ("qmp_capabilities", command):
            stream.write(json.dumps({"execute": execute}).encode() + b"\n")
            stream.flush()
            while True:
                reply: dict[str, object] = json.loads(stream.readline())
                if "return" in reply or "error" in reply:
                    break
        return reply


@pytest.fixture
def qemu_run(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # whatever happened, no QEMU outlives the test
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.vm
@pytest.mark.parametrize("vcpus", [1, 2])
def test_boot_to_agent_and_power_off(
    bookworm: Image, tmp_path: Path, vcpus: int, qemu_run: list[subprocess.Popen[bytes]]
) -> None:
    kernel = KernelStore(CACHE).pull()
    initrd = ensure_initramfs(kernel)
    disk = tmp_path / "root.img"
    subprocess.run(["cp", "--sparse=always", str(bookworm.path), str(disk)], check=True)
    spec = QemuLaunch(
        kernel=kernel.boot_file,
        initrd=initrd.path,
        root_drive=disk,
        qmp_socket=tmp_path / "qmp.sock",
        console_log=tmp_path / "console.log",
        accel=Accel.TCG,
        vcpus=vcpus,
        mem_mib=512,
        tsc_khz=host_tsc_khz().khz,
        ports=(
            SerialPort("org.nexus.control", tmp_path / "control.sock"),
            SerialPort("org.nexus.mcp", tmp_path / "mcp.sock"),
        ),
    )
    start = time.monotonic()
    proc = subprocess.Popen(
        qemu_argv(spec), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    qemu_run.append(proc)
    with connect(tmp_path / "control.sock", start + 10) as control:
        control.settimeout(60)
        line = control.makefile("rb").readline()
    booted_s = time.monotonic() - start
    console = (tmp_path / "console.log").read_text(errors="replace")
    assert json.loads(line)["standin"] is True, console
    assert booted_s < 60
    off = time.monotonic()
    assert qmp_command(tmp_path / "qmp.sock", "system_powerdown") == {"return": {}}
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - off < 10, "graceful power-off took too long"
    fsck = fsck_clean(disk)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
