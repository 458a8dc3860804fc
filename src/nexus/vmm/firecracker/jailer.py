"""Running Firecracker under its jailer: the pure argv builder, the chroot layout and the plan of files to place.

The jailer chroots into ``<chroot_base>/<exec-file name>/<id>/root``, so every path Firecracker is given (kernel,
initrd, drives, sockets) is a path inside that root. :func:`plan_chroot` decides, without touching the disk,
which host file appears under which in-chroot name and rewrites the boot source and drives accordingly;
:func:`place_files` carries a plan out (hard link; a copy only where the source is on another filesystem, and
never silently for a writable drive, whose writes would then miss the original). :class:`JailerOptions` is how
nexusd is configured to use it. Nothing here runs the jailer, creates cgroups or network namespaces, or changes
file ownership (the driver does that); :func:`cgroup_dirs` only says where the jailer's cgroups will be.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path, PurePath, PurePosixPath

from nexus.domain.errors import DriverError, Invalid
from nexus.vmm.firecracker.argv import check_instance_id, firecracker_args
from nexus.vmm.firecracker.config import BootSource, Drive, LogLevel

JAILER_BINARY = "jailer"
DEFAULT_CHROOT_BASE = Path("/srv/jailer")
IN_CHROOT_API_SOCKET = PurePosixPath("/run/firecracker.socket")
NETNS_DIR = PurePosixPath("/var/run/netns")
KERNEL_NAME = "vmlinux"
FIRECRACKER_NAME = "firecracker"  # the jailer refuses an exec file whose name lacks it
INITRD_NAME = "initrd.img"


@dataclass(frozen=True, slots=True)
class JailerOptions:
    """How nexusd runs every Firecracker through the jailer (nexusd.toml ``jailer_*`` keys). The chroot base must be
    on the filesystem of the state dir: VM drives are hard-linked into each chroot, never copied. ``cgroups``
    (``("cpu.max", "50000 100000")``...) put each Firecracker in a cgroup of its own,
    ``<cgroup mount>/<parent_cgroup>/<vm id>`` (parent: the Firecracker file's name, as the jailer's own default),
    which the driver removes once Firecracker is gone; ``new_pid_ns`` runs it as pid 1 of a PID namespace of its
    own."""

    binary: Path
    uid: int
    gid: int
    chroot_base: Path = DEFAULT_CHROOT_BASE
    cgroup_version: int = 2
    cgroups: tuple[tuple[str, str], ...] = ()
    parent_cgroup: str | None = None
    new_pid_ns: bool = False

    def __post_init__(self) -> None:
        if self.uid < 0 or self.gid < 0:
            raise Invalid("the jailer's uid and gid must not be negative")
        if self.uid == 0:
            raise Invalid(
                "jailer_uid 0 would run Firecracker as root, which defeats the jailer; pick an unprivileged uid"
            )
        if not self.chroot_base.is_absolute():
            raise Invalid(f"jailer_chroot_base must be an absolute path, not {self.chroot_base}")
        if self.cgroup_version not in (1, 2):
            raise Invalid(f"jailer_cgroup_version must be 1 or 2, not {self.cgroup_version}")
        for key, _value in self.cgroups:
            check_cgroup_file(key)
        if self.parent_cgroup is not None:
            parts = PurePosixPath(self.parent_cgroup).parts
            if not parts or PurePosixPath(self.parent_cgroup).is_absolute() or ".." in parts:
                raise Invalid(f"jailer_parent_cgroup {self.parent_cgroup!r} must be a relative cgroup path")


def check_cgroup_file(key: str) -> str:
    if not key or "=" in key or "/" in key or "." not in key:
        raise Invalid(f"cgroup file {key!r} must look like 'controller.file' (cpu.max, memory.max...)")
    return key


def parse_cgroup_setting(text: str) -> tuple[str, str]:
    """``"cpu.max=50000 100000"`` → ``("cpu.max", "50000 100000")`` (the jailer's ``--cgroup`` syntax)."""
    key, sep, value = text.partition("=")
    if not sep or not value:
        raise Invalid(f"jailer_cgroups entry {text!r} must be 'controller.file=value', e.g. 'memory.max=1G'")
    return check_cgroup_file(key.strip()), value


@dataclass(frozen=True, slots=True)
class JailerLaunch:
    """What one jailed Firecracker needs. ``cgroups`` are ``(file, value)`` pairs, e.g. ``("cpu.max", "50000
    100000")``; ``netns`` is a network namespace name under ``/var/run/netns``."""

    vm_id: str
    exec_file: Path
    uid: int
    gid: int
    chroot_base: Path
    netns: str | None = None
    cgroup_version: int = 2
    cgroups: tuple[tuple[str, str], ...] = ()
    parent_cgroup: str | None = None
    new_pid_ns: bool = False
    daemonize: bool = False
    level: LogLevel | None = None
    api_sock: PurePosixPath = IN_CHROOT_API_SOCKET
    jailer_binary: str | Path = JAILER_BINARY

    def __post_init__(self) -> None:
        check_instance_id(self.vm_id)
        if FIRECRACKER_NAME not in self.exec_file.name:
            raise Invalid(f"the jailer only runs a file whose name contains {FIRECRACKER_NAME!r}, not {self.exec_file}")
        if self.uid < 0 or self.gid < 0:
            raise Invalid("the jailer's uid and gid must not be negative")
        if self.cgroup_version not in (1, 2):
            raise Invalid(f"cgroup_version must be 1 or 2, not {self.cgroup_version}")
        if self.netns is not None and (not self.netns or "/" in self.netns or self.netns in (".", "..")):
            raise Invalid(f"netns {self.netns!r} must be a namespace name, not a path")
        for key, _value in self.cgroups:
            check_cgroup_file(key)
        if not self.api_sock.is_absolute():
            raise Invalid(f"the in-chroot API socket path must be absolute, not {self.api_sock}")


def jailer_argv(launch: JailerLaunch) -> list[str]:
    """``jailer --id ID --exec-file BIN --uid U --gid G --chroot-base-dir DIR [--netns /var/run/netns/NAME]
    [--cgroup-version N --cgroup k=v...] [--parent-cgroup P] [--new-pid-ns] [--daemonize] -- --api-sock ...``."""
    argv = [
        str(launch.jailer_binary),
        "--id",
        launch.vm_id,
        "--exec-file",
        str(launch.exec_file),
        "--uid",
        str(launch.uid),
        "--gid",
        str(launch.gid),
        "--chroot-base-dir",
        str(launch.chroot_base),
    ]
    if launch.netns is not None:
        argv += ["--netns", str(NETNS_DIR / launch.netns)]
    if launch.cgroups or launch.parent_cgroup is not None:
        argv += ["--cgroup-version", str(launch.cgroup_version)]
    for key, value in launch.cgroups:
        argv += ["--cgroup", f"{key}={value}"]
    if launch.parent_cgroup is not None:
        argv += ["--parent-cgroup", launch.parent_cgroup]
    if launch.new_pid_ns:
        argv.append("--new-pid-ns")
    if launch.daemonize:
        argv.append("--daemonize")
    argv.append("--")
    argv += firecracker_args(launch.api_sock, level=launch.level)
    return argv


def cgroup_dirs(launch: JailerLaunch, mounts: str) -> tuple[Path, ...]:
    """Pure: the cgroup dirs the jailer makes for ``launch`` (none without ``cgroups``), given ``/proc/mounts``:
    ``<mount>/<parent cgroup>/<vm id>`` on the cgroup2 mount, or on the v1 mount of each controller named."""
    if not launch.cgroups:
        return ()
    parent = launch.parent_cgroup or launch.exec_file.name
    table = [line.split() for line in mounts.splitlines() if len(line.split()) >= 4]
    if launch.cgroup_version == 2:
        found = [Path(fields[1]) for fields in table if fields[2] == "cgroup2"]
        if not found:
            raise Invalid("jailer_cgroup_version is 2 but this host has no cgroup2 mount")
        return (found[0] / parent / launch.vm_id,)
    dirs: list[Path] = []
    for key, _value in launch.cgroups:
        controller = key.split(".", 1)[0]
        mount = next((Path(f[1]) for f in table if f[2] == "cgroup" and controller in f[3].split(",")), None)
        if mount is None:
            raise Invalid(f"jailer_cgroup_version is 1 but no cgroup v1 hierarchy has the {controller} controller")
        if mount / parent / launch.vm_id not in dirs:
            dirs.append(mount / parent / launch.vm_id)
    return tuple(dirs)


# --- chroot layout ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChrootLayout:
    """Where the jailer puts one instance: ``<chroot_base>/<exec_name>/<vm_id>/root``."""

    chroot_base: Path
    exec_name: str
    vm_id: str

    @property
    def instance_dir(self) -> Path:
        return self.chroot_base / self.exec_name / self.vm_id

    @property
    def root(self) -> Path:
        return self.instance_dir / "root"

    def host_path(self, in_chroot: PurePath | str) -> Path:
        """The host path of an absolute in-chroot path (``/run/firecracker.socket`` → ``<root>/run/...``)."""
        inner = PurePosixPath(in_chroot)
        if not inner.is_absolute() or ".." in inner.parts:
            raise Invalid(f"in-chroot path {inner} must be absolute and without '..'")
        return self.root.joinpath(*inner.parts[1:])

    @property
    def api_socket(self) -> Path:
        """Host path of the API socket of a jailed Firecracker started with the default ``--api-sock``."""
        return self.host_path(IN_CHROOT_API_SOCKET)


def chroot_layout(chroot_base: Path, exec_file: Path, vm_id: str) -> ChrootLayout:
    """The layout the jailer will use for ``exec_file`` (only its file name counts) and ``vm_id``."""
    if not exec_file.name:
        raise Invalid(f"exec file {exec_file} has no file name")
    return ChrootLayout(chroot_base=chroot_base, exec_name=exec_file.name, vm_id=check_instance_id(vm_id))


@dataclass(frozen=True, slots=True)
class PlacedFile:
    """One host file and the name it gets inside the chroot. ``writable``: the VM writes to it (a rw drive)."""

    source: Path
    target: Path
    in_chroot: PurePosixPath
    writable: bool = False


@dataclass(frozen=True, slots=True)
class ChrootPlan:
    """The files to place, plus the boot source and drives rewritten to their in-chroot paths (send these)."""

    layout: ChrootLayout
    files: tuple[PlacedFile, ...]
    boot: BootSource
    drives: tuple[Drive, ...]


def drive_file_names(drives: Sequence[Drive]) -> tuple[str, ...]:
    """The names the drives' files have where Firecracker opens them: ``root<suffix>`` for the root drive,
    ``data<N><suffix>`` for the Nth data drive. By position, not by id: a snapshot records these names, and a fork's
    drives (copies with ids of their own, in the parent's order) must sit under the names its parent's snapshot
    holds."""
    data = iter(range(len(drives)))
    return tuple(("root" if d.is_root_device else f"data{next(data)}") + PurePath(d.path).suffix for d in drives)


def plan_links(directory: Path, drives: Sequence[Drive]) -> tuple[tuple[PlacedFile, ...], tuple[Drive, ...]]:
    """Pure: without the jailer, each drive behind a symlink ``directory/<name>`` (:func:`drive_file_names`) and the
    drives rewritten to that relative name (Firecracker runs in ``directory``), so its snapshots name no drive of
    another VM."""
    files = tuple(
        PlacedFile(Path(d.path), directory / name, PurePosixPath(name), writable=not d.read_only)
        for d, name in zip(drives, drive_file_names(drives), strict=True)
    )
    return files, tuple(replace(d, path=f.in_chroot) for d, f in zip(drives, files, strict=True))


def plan_chroot(layout: ChrootLayout, boot: BootSource, drives: Sequence[Drive]) -> ChrootPlan:
    """Pure: kernel → ``/vmlinux``, initrd → ``/initrd.img``, drives → ``/<name>`` (:func:`drive_file_names`)."""
    files: list[PlacedFile] = []

    def place(source: PurePath, name: str, writable: bool) -> PurePosixPath:
        inner = PurePosixPath("/") / name
        if any(f.in_chroot == inner for f in files):
            raise Invalid(f"two files would share the in-chroot path {inner}")
        files.append(PlacedFile(Path(source), layout.host_path(inner), inner, writable))
        return inner

    kernel = place(boot.kernel, KERNEL_NAME, writable=False)
    initrd = None if boot.initrd is None else place(boot.initrd, INITRD_NAME, writable=False)
    jailed_boot = replace(boot, kernel=kernel, initrd=initrd)
    jailed_drives = tuple(
        replace(d, path=place(d.path, name, writable=not d.read_only))
        for d, name in zip(drives, drive_file_names(drives), strict=True)
    )
    return ChrootPlan(layout=layout, files=tuple(files), boot=jailed_boot, drives=jailed_drives)


class Placement(StrEnum):
    LINKED = "linked"
    COPIED = "copied"
    PRESENT = "present"  # the target already is the source (same inode)


LinkFn = Callable[[Path, Path], None]
CopyFn = Callable[[Path, Path], object]


def place_files(
    files: Iterable[PlacedFile],
    *,
    copy_writable: bool = False,
    link: LinkFn = os.link,
    copy: CopyFn = shutil.copyfile,
) -> list[tuple[PlacedFile, Placement]]:
    """Hard-link each file into the chroot (making parent directories); copy on EXDEV (another filesystem).

    A writable drive on another filesystem is refused unless ``copy_writable``: the VM would write to the copy
    and the original would never see it. A target that exists and is not the source is replaced.
    """
    done: list[tuple[PlacedFile, Placement]] = []
    for f in files:
        try:
            f.target.parent.mkdir(parents=True, exist_ok=True)
            if f.target.exists() and os.path.samefile(f.source, f.target):
                done.append((f, Placement.PRESENT))
                continue
            f.target.unlink(missing_ok=True)
            try:
                link(f.source, f.target)
                done.append((f, Placement.LINKED))
                continue
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            if f.writable and not copy_writable:
                raise DriverError(
                    f"cannot hard-link the writable drive {f.source} into {f.target.parent}: they are on different "
                    "filesystems (or btrfs subvolumes), and a copy would not keep the VM's writes (put the chroot "
                    "base on the same filesystem as the drives; the btrfs storage backend keeps each drive in a "
                    "subvolume of its own, which the jailer cannot link from)"
                )
            copy(f.source, f.target)
            done.append((f, Placement.COPIED))
        except OSError as exc:
            raise DriverError(f"cannot place {f.source} at {f.target} in the chroot: {exc}") from exc
    return done
