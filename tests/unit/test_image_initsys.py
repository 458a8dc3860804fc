"""Init system detection on fake trees, the agent service for each, and BusyBox init's files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nexus.images import busyboxinit
from nexus.images.initsys import InitSystem, detect_init, install_agent_service

LAUNCHER = "/usr/local/bin/nexus-agent"
HOST_BUSYBOX = Path("/bin/busybox")
needs_busybox = pytest.mark.skipif(not HOST_BUSYBOX.exists(), reason="busybox-static not installed")


def touch(root: Path, path: str, data: str = "", mode: int = 0o755) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(data)
    target.chmod(mode)


def link(root: Path, path: str, to: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(to)


def debian_minbase(root: Path) -> Path:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "sbin").mkdir(parents=True)
    link(root, "/bin", "usr/bin")
    link(root, "/sbin", "usr/sbin")
    touch(root, "/usr/bin/python3.11")
    touch(root, "/etc/inittab.dpkg-dist", "")
    return root


def test_debian_minbase_is_busybox(tmp_path: Path) -> None:
    assert detect_init(debian_minbase(tmp_path)) is InitSystem.BUSYBOX


def test_systemd(tmp_path: Path) -> None:
    touch(tmp_path, "/lib/systemd/systemd")
    link(tmp_path, "/sbin/init", "/lib/systemd/systemd")
    assert detect_init(tmp_path) is InitSystem.SYSTEMD


def test_systemd_without_sbin_init(tmp_path: Path) -> None:
    touch(tmp_path, "/usr/lib/systemd/systemd")
    assert detect_init(tmp_path) is InitSystem.SYSTEMD
    assert install_agent_service(tmp_path, LAUNCHER) is InitSystem.SYSTEMD
    assert os.readlink(tmp_path / "sbin" / "init") == "/usr/lib/systemd/systemd"


def test_busybox_init_wins_over_installed_systemd(tmp_path: Path) -> None:
    touch(tmp_path, "/lib/systemd/systemd")
    touch(tmp_path, "/bin/busybox")
    link(tmp_path, "/sbin/init", "/bin/busybox")
    assert detect_init(tmp_path) is InitSystem.BUSYBOX


def test_openrc(tmp_path: Path) -> None:
    touch(tmp_path, "/bin/busybox")
    link(tmp_path, "/sbin/init", "/bin/busybox")
    touch(tmp_path, "/sbin/openrc")
    (tmp_path / "etc" / "init.d").mkdir(parents=True)
    assert detect_init(tmp_path) is InitSystem.OPENRC
    assert install_agent_service(tmp_path, LAUNCHER) is InitSystem.OPENRC
    service = (tmp_path / "etc/init.d/nexus-agent").read_text()
    assert service.startswith("#!/sbin/openrc-run") and f'command="{LAUNCHER}"' in service
    assert "supervise-daemon" in service
    assert os.readlink(tmp_path / "etc/runlevels/default/nexus-agent") == "/etc/init.d/nexus-agent"


def test_systemd_unit_enabled(tmp_path: Path) -> None:
    touch(tmp_path, "/lib/systemd/systemd")
    link(tmp_path, "/sbin/init", "/lib/systemd/systemd")
    install_agent_service(tmp_path, LAUNCHER)
    unit = (tmp_path / "etc/systemd/system/nexus-agent.service").read_text()
    assert f"ExecStart={LAUNCHER}" in unit and "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    assert "\nKillMode=process\n" in unit  # a restarted agent leaves its background processes running
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants/nexus-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/nexus-agent.service"


@needs_busybox
def test_busybox_install_on_debian_minbase(tmp_path: Path) -> None:
    root = debian_minbase(tmp_path)
    assert install_agent_service(root, LAUNCHER, HOST_BUSYBOX) is InitSystem.BUSYBOX
    assert (root / "usr/bin/busybox").read_bytes() == HOST_BUSYBOX.read_bytes()  # /bin -> usr/bin
    assert os.access(root / "usr/bin/busybox", os.X_OK)
    assert os.readlink(root / "usr/sbin/init") == "/bin/busybox"
    for tool in ("poweroff", "reboot", "halt"):
        assert os.readlink(root / "usr/sbin" / tool) == "/bin/busybox"
    inittab = (root / "etc/inittab").read_text()
    assert f"::respawn:{LAUNCHER}" in inittab
    for script in (busyboxinit.SYSINIT, busyboxinit.SHUTDOWN, busyboxinit.POWER_BUTTON_HANDLER):
        path = root / script.lstrip("/")
        assert os.access(path, os.X_OK)
        subprocess.run([str(HOST_BUSYBOX), "sh", "-n", str(path)], check=True)
    assert (root / "etc/nexus/acpid.conf").read_text() == "PWRF PWRF/00000080\n"


@needs_busybox
def test_busybox_install_keeps_a_distro_busybox(tmp_path: Path) -> None:
    touch(tmp_path, "/bin/busybox", "alpine's own")
    touch(tmp_path, "/lib/ld-musl-x86_64.so.1")
    touch(tmp_path, "/sbin/poweroff")
    link(tmp_path, "/sbin/init", "/bin/busybox")
    install_agent_service(tmp_path, LAUNCHER, HOST_BUSYBOX)
    assert (tmp_path / "bin/busybox").read_text() == "alpine's own"
    assert not (tmp_path / "sbin/poweroff").is_symlink()


def test_inittab_is_complete() -> None:
    lines = busyboxinit.inittab(LAUNCHER).splitlines()
    actions = {line.split(":")[2] for line in lines if not line.startswith("#")}
    assert actions == {"sysinit", "respawn", "ctrlaltdel", "shutdown", "restart"}
    assert f"::sysinit:{busyboxinit.SYSINIT}" in lines
    assert f"::shutdown:{busyboxinit.SHUTDOWN}" in lines
    assert any(line.startswith("::respawn:/bin/busybox acpid -f") for line in lines)
    assert not any(line.startswith("ttyS0") for line in lines)
    assert "ttyS0::respawn:-/bin/sh" in busyboxinit.inittab(LAUNCHER, console_shell=True)


def test_sysinit_mounts_everything() -> None:
    text = busyboxinit.rc_sysinit()
    for mount in (
        "mnt sysfs /sys",
        "mnt devtmpfs /dev",
        "mnt devpts /dev/pts",
        "mnt tmpfs /dev/shm",
        "mnt tmpfs /run",
        "mnt tmpfs /tmp",
    ):
        assert mount in text
    assert "remount,rw /" in text and "ip link set lo up" in text and "hostname" in text


def test_shutdown_stops_processes_before_unmounting() -> None:
    text = busyboxinit.rc_shutdown()
    order = [
        text.index(s)
        for s in ("kill -TERM -1", "kill -KILL -1", "swapoff -a", "umount -a -r", "remount,ro /", "poweroff -f")
    ]
    assert order == sorted(order)
    assert "$bb kill" not in text  # the builtin, so the script itself survives kill(-1)
    assert busyboxinit.FAST_POWEROFF_FLAG in busyboxinit.power_button_handler()


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox not installed")
def test_scripts_parse() -> None:
    for text in (busyboxinit.rc_sysinit(), busyboxinit.rc_shutdown(), busyboxinit.power_button_handler()):
        subprocess.run(["busybox", "sh", "-n"], input=text.encode(), check=True)
