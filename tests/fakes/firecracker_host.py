"""A nexusd whose VMM is the fake Firecracker (tests/fakes/firecracker.py): a real agent behind a hybrid vsock
muxer, no QEMU boot. Shared by the Firecracker driver and MCP tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nexus.domain import Image, Layout
from nexus.services import SettingsService
from nexus.store import ImageRepo, SettingsRepo, open_database
from tests.fakes.firecracker import write_fake_binary
from tests.fakes.jailer import write_fake_jailer
from tests.helpers import Daemon, start_daemon
from tests.real_firecracker import hlt_vmlinux

KERNEL_VERSION = "6.1.0-99-cloud-amd64"
FAULT = "Start microvm error: fake fault injected by the test"
STUB_CONFIG = "".join(
    f"CONFIG_{name}=y\n" for name in ("VIRTIO_MMIO", "VIRTIO_BLK", "EXT4_FS", "VIRTIO_CONSOLE", "VIRTIO_VSOCKETS")
)


def _busybox() -> str | None:
    from nexus.domain import Unavailable
    from nexus.images.busybox import find_static_busybox

    try:
        find_static_busybox()
    except Unavailable as exc:
        return exc.message
    return None


FIRECRACKER_SKIPS = [pytest.mark.skipif(_busybox() is not None, reason=str(_busybox()))]


def stub_kernel(kernels_dir: Path) -> Path:
    kdir = kernels_dir / KERNEL_VERSION
    (kdir / "modules").mkdir(parents=True)
    (kdir / "modules" / "modules.dep").write_text("")
    (kdir / "config").write_text(STUB_CONFIG)
    (kdir / "vmlinuz").write_bytes(b"MZ stub bzImage")
    (kdir / "vmlinux").write_bytes(hlt_vmlinux())  # the fake reads its magic; the real Firecracker starts it
    meta = {
        "format": 1,
        "version": KERNEL_VERSION,
        "flavour": "cloud-amd64",
        "sha256": "0" * 64,
        "size_bytes": 15,
        "pulled_at": datetime.now(UTC).isoformat(),
    }
    (kdir / "kernel.json").write_text(json.dumps(meta))
    return kdir


def prepare_state(base: Path) -> Path:
    """A state dir with a stub kernel, an image row named like the default image, and ``vmm=firecracker``."""
    state = base / "state"
    layout = Layout(state_dir=state, runtime_dir=base / "run")
    stub_kernel(layout.cache_dir / "kernels")
    layout.images_dir.mkdir(parents=True, exist_ok=True)
    image_file = layout.images_dir / "stub.ext4"
    image_file.write_bytes(b"")
    conn = open_database(layout.database)
    try:
        ImageRepo(conn).insert(
            Image(
                id="img-stub",
                name="debian-bookworm",
                base="debian-bookworm",
                path=image_file,
                size_mib=1,
                sha256="0" * 64,
                init_system="busybox",
                agent_version="0.1.0",
                built_at=datetime.now(UTC),
            )
        )
        SettingsService(SettingsRepo(conn)).set("vmm", "firecracker")
    finally:
        conn.close()
    return state


def firecracker_daemon(
    base: Path,
    extra_env: dict[str, str] | None = None,
    jailer_uid: int | None = None,
    *extra_args: str,
    stop_vms_on_exit: bool = True,
) -> Daemon:
    """nexusd with the fake firecracker as its binary; with ``jailer_uid``, run through the fake jailer as that uid
    (chroot base ``base/jail``). A second daemon on the same ``base`` reuses the state dir."""
    state = base / "state" if (base / "state").exists() else prepare_state(base)
    env = {"NEXUS_FIRECRACKER_ASSUME_KVM": "1", **(extra_env or {})}
    config = base / "nexusd.toml"
    lines = [
        "boot_timeout_s = 30",
        "heartbeat_timeout_s = 3",
        "stop_timeout_s = 10",
        f'firecracker_binary = "{write_fake_binary(base, world_runnable=jailer_uid is not None)}"',
    ]
    if jailer_uid is not None:
        lines += [
            f'jailer_binary = "{write_fake_jailer(base)}"',
            f"jailer_uid = {jailer_uid}",
            f"jailer_gid = {jailer_uid}",
            f'jailer_chroot_base = "{base / "jail"}"',
        ]
    config.write_text("\n".join(lines) + "\n")
    return start_daemon(
        base, "--config", str(config), *extra_args, env=env, state_dir=state, stop_vms_on_exit=stop_vms_on_exit
    )


@contextlib.contextmanager
def running_daemon(prefix: str) -> Iterator[Daemon]:
    """A ``firecracker_daemon`` in a new short temp dir (Unix socket paths); afterwards it is stopped, its exit
    status must be 0, and the dir is removed."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    daemon = firecracker_daemon(base)
    try:
        yield daemon
    finally:
        code = daemon.stop()
        log = daemon.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (the fake and its agent name the VM's runtime dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
