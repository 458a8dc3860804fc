"""Tell which init system a root filesystem tree uses, and install the Nexus agent as a service of it.

- systemd: ``/sbin/init`` resolves to ``systemd`` (or there is no /sbin/init but systemd is installed): a unit
  ``nexus-agent.service`` wanted by multi-user.target (the ``.wants`` symlink ``systemctl enable`` makes).
- OpenRC: ``/sbin/openrc`` with ``/etc/init.d`` (and /sbin/init not systemd): ``/etc/init.d/nexus-agent``
  linked into the default runlevel.
- otherwise BusyBox init: a static busybox is installed as /bin/busybox when the tree has none (Debian minbase
  has no init at all), ``/sbin/init`` points at it, and the inittab of :mod:`nexus.images.busyboxinit`
  replaces the stock one; ``poweroff``/``reboot``/``halt`` are linked to busybox where the tree lacks them.
All writes go through :mod:`nexus.images.rootfs`, so guest symlinks cannot redirect them onto the host.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from nexus.images import busyboxinit, rootfs
from nexus.images.busybox import find_static_busybox, is_static_binary

SYSTEMD_BINARIES = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")
OPENRC_BINARIES = ("/sbin/openrc", "/usr/sbin/openrc", "/sbin/openrc-run", "/usr/sbin/openrc-run")
UNIT_NAME = "nexus-agent.service"


class InitSystem(StrEnum):
    SYSTEMD = "systemd"
    OPENRC = "openrc"
    BUSYBOX = "busybox"


def detect_init(root: Path) -> InitSystem:
    """The init system of the tree at ``root`` (BusyBox when it has none we know)."""
    init = rootfs.link_target_in_root(root, "/sbin/init")
    if init is not None and init.rsplit("/", 1)[-1] == "systemd":
        return InitSystem.SYSTEMD
    if init is None and any(rootfs.guest_exists(root, p) for p in SYSTEMD_BINARIES):
        return InitSystem.SYSTEMD
    has_openrc = any(rootfs.guest_exists(root, p) for p in OPENRC_BINARIES)
    if has_openrc and rootfs.resolve_in_root(root, "/etc/init.d").is_dir():
        return InitSystem.OPENRC
    return InitSystem.BUSYBOX


def systemd_unit(launcher: str) -> str:
    return f"""[Unit]
Description=Nexus guest agent
After=local-fs.target
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart={launcher}
Restart=always
RestartSec=1
# Only the agent: the background processes it started (process_start) outlive it, as under BusyBox or OpenRC.
KillMode=process
TimeoutStopSec=5

[Install]
WantedBy=multi-user.target
"""


def openrc_service(launcher: str) -> str:
    return f"""#!/sbin/openrc-run
# Nexus guest agent, supervised (restarted when it dies).
description="Nexus guest agent"
command="{launcher}"
supervisor=supervise-daemon
respawn_delay=1
respawn_max=0
pidfile="/run/nexus-agent.pid"

depend() {{
    need localmount
    after bootmisc
}}
"""


def install_systemd(root: Path, launcher: str) -> None:
    unit = f"/etc/systemd/system/{UNIT_NAME}"
    rootfs.write_file(root, unit, systemd_unit(launcher))
    rootfs.make_symlink(root, f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}", unit)
    if rootfs.link_target_in_root(root, "/sbin/init") is None:
        systemd = next(p for p in SYSTEMD_BINARIES if rootfs.guest_exists(root, p))
        rootfs.make_symlink(root, "/sbin/init", systemd)


def install_openrc(root: Path, launcher: str) -> None:
    rootfs.write_file(root, "/etc/init.d/nexus-agent", openrc_service(launcher), mode=0o755)
    rootfs.make_symlink(root, "/etc/runlevels/default/nexus-agent", "/etc/init.d/nexus-agent")


def install_busybox(root: Path, launcher: str, busybox: Path | None = None, console_shell: bool = False) -> None:
    bb = busyboxinit.BUSYBOX
    if not is_static_binary(rootfs.resolve_in_root(root, bb)) and not _dynamic_busybox_ok(root):
        rootfs.copy_file(root, busybox or find_static_busybox(), bb, mode=0o755)
    rootfs.make_symlink(root, "/sbin/init", bb)
    for tool in ("poweroff", "reboot", "halt"):
        if not any(rootfs.guest_exists(root, f"{d}/{tool}") for d in ("/sbin", "/usr/sbin", "/bin", "/usr/bin")):
            rootfs.make_symlink(root, f"/sbin/{tool}", bb)
    rootfs.write_file(root, "/etc/inittab", busyboxinit.inittab(launcher, console_shell))
    rootfs.write_file(root, busyboxinit.SYSINIT, busyboxinit.rc_sysinit(), mode=0o755)
    rootfs.write_file(root, busyboxinit.SHUTDOWN, busyboxinit.rc_shutdown(), mode=0o755)
    rootfs.write_file(root, busyboxinit.ACPI_ACTIONS, busyboxinit.acpid_actions())
    rootfs.write_file(root, busyboxinit.POWER_BUTTON_HANDLER, busyboxinit.power_button_handler(), mode=0o755)


def _dynamic_busybox_ok(root: Path) -> bool:
    """A distribution's own (dynamically linked) busybox is fine when its loader is in the tree (Alpine)."""
    host = rootfs.resolve_in_root(root, busyboxinit.BUSYBOX)
    if not host.is_file():
        return False
    return any(rootfs.guest_exists(root, p) for p in ("/lib/ld-musl-x86_64.so.1", "/lib64/ld-linux-x86-64.so.2"))


def install_agent_service(root: Path, launcher: str, busybox: Path | None = None) -> InitSystem:
    """Detect the init system and install the agent into it; returns what was found."""
    found = detect_init(root)
    if found is InitSystem.SYSTEMD:
        install_systemd(root, launcher)
    elif found is InitSystem.OPENRC:
        install_openrc(root, launcher)
    else:
        install_busybox(root, launcher, busybox)
    return found
