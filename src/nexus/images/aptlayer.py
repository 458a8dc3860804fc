"""Install Debian packages into a debootstrapped tree with the tree's own apt-get, run in a chroot.

Why apt-get and not ``debootstrap --include``: debootstrap's resolver follows only plain dependencies (no
virtual packages, the first of each alternative), while apt resolves them all and names a package that does not
exist ("Unable to locate package"); and the package layer then goes on top of the plain base, cached once
for every package set. Only trees debootstrapped from the Debian mirror get here (never a user's tarball: its
code would run as root on the host).

apt runs as ``unshare --mount --pid --fork --kill-child --mount-proc=<tree>/proc chroot <tree> apt-get ...``:
/proc exists only in that private mount namespace and every process the packages' scripts start dies with the
namespace, so nothing stays mounted or running whatever happens. A ``policy-rc.d`` refusing service starts is
in place meanwhile, the host's ``resolv.conf`` (apt needs DNS) and the character devices package scripts use
(/dev/null and the like: the unpacked base has none, device nodes are skipped); all are put back as they were.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from nexus.assets.tools import require_tool, stream_tool
from nexus.domain.errors import Invalid, Unavailable
from nexus.images import rootfs

Progress = Callable[[str, float], None]

POLICY_RC_D = "/usr/sbin/policy-rc.d"
RESOLV_CONF = "/etc/resolv.conf"
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
APT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C",
    "HOME": "/root",
}
_MISSING = (
    re.compile(r"^E: Unable to locate package (\S+)"),
    re.compile(r"^E: Package '([^']+)' has no installation candidate"),
)
_PATTERN = re.compile(r"^Note, selecting '[^']+' for (?:regex|glob) '([^']+)'")
# (name, major, minor) of the devices debootstrap itself makes for the same reason
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
_PLANNED = re.compile(r"^\d+ upgraded, (\d+) newly installed")


def chroot_argv(tree: Path, *command: str) -> list[str]:
    return [
        "unshare",
        "--mount",
        "--pid",
        "--fork",
        "--kill-child",
        f"--mount-proc={tree / 'proc'}",
        "chroot",
        str(tree),
        *command,
    ]


def update_argv() -> list[str]:
    return ["apt-get", "update", "-q", "-o", "Acquire::Languages=none"]


def install_argv(packages: tuple[str, ...]) -> list[str]:
    return ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0", *packages]


class InstallWatch:
    """Reads apt-get install's output: progress (downloads and set-ups of the packages it planned), the names it
    could not find, and names it took for patterns (a name apt does not know but that holds a ``.``)."""

    def __init__(self, report: Progress) -> None:
        self._report = report
        self.planned = 0
        self.steps = 0
        self.missing: list[str] = []
        self.patterns: list[str] = []

    def __call__(self, line: str) -> None:
        if found := _PLANNED.match(line):
            self.planned = int(found[1])
        elif line.startswith(("Get:", "Setting up ")) and self.planned:
            self.steps += 1
            self._report("packages", min(self.steps / (2 * self.planned), 0.99))
        elif found := _PATTERN.match(line):
            self.patterns.append(found[1])
        for pattern in _MISSING:
            if found := pattern.match(line):
                self.missing.append(found[1])


def install_packages(tree: Path, packages: tuple[str, ...], suite: str, report: Progress) -> None:
    """apt-get install ``packages`` (without recommends) into ``tree``; Invalid naming what apt does not know."""
    require_tool("unshare", "util-linux")
    require_tool("chroot", "coreutils")
    (tree / "proc").mkdir(exist_ok=True)
    made = _make_devices(tree)
    host = rootfs.resolve_in_root(tree, POLICY_RC_D, follow_last=False)
    policy_was_there = os.path.lexists(host)
    resolv = rootfs.resolve_in_root(tree, RESOLV_CONF, follow_last=False)
    old_resolv = os.readlink(resolv) if resolv.is_symlink() else (resolv.read_bytes() if resolv.exists() else None)
    resolv_mode = resolv.stat().st_mode & 0o7777 if isinstance(old_resolv, bytes) else 0o644
    if not policy_was_there:
        rootfs.write_file(
            tree, POLICY_RC_D, "#!/bin/sh\n# no services start while the image is built\nexit 101\n", 0o755
        )
    rootfs.write_file(tree, RESOLV_CONF, HOST_RESOLV_CONF.read_bytes() if HOST_RESOLV_CONF.exists() else b"")
    try:
        report("packages", 0.0)
        stream_tool(
            chroot_argv(tree, *update_argv()),
            what=f"read the package lists of Debian {suite}",
            on_line=lambda _line: None,
            env=APT_ENV,
            timeout_s=600,
        )
        watch = InstallWatch(report)
        try:
            stream_tool(
                chroot_argv(tree, *install_argv(packages)),
                what=f"install {', '.join(packages)}",
                on_line=watch,
                env=APT_ENV,
                timeout_s=3600,
            )
        except Unavailable:
            if watch.missing:
                raise Invalid(f"Debian {suite} has no package {', '.join(watch.missing)}") from None
            raise
        if watch.patterns:
            raise Invalid(f"Debian {suite} has no package {', '.join(watch.patterns)}")
    finally:
        for device in made:
            device.unlink(missing_ok=True)
        if not policy_was_there:
            host.unlink(missing_ok=True)
        if isinstance(old_resolv, str):
            rootfs.make_symlink(tree, RESOLV_CONF, old_resolv)
        elif old_resolv is not None:
            rootfs.write_file(tree, RESOLV_CONF, old_resolv, resolv_mode)
        else:
            resolv.unlink(missing_ok=True)
    report("packages", 1.0)


def _make_devices(tree: Path) -> list[Path]:
    """The character devices of :data:`DEVICES` missing in ``tree``'s /dev, made; their paths."""
    dev = rootfs.make_dirs(tree, "/dev")
    made = []
    for name, major, minor in DEVICES:
        path = dev / name
        if not os.path.lexists(path):
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
            os.chmod(path, 0o666)  # mknod's mode goes through the umask
            made.append(path)
    return made
