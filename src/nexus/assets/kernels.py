"""The kernel cache: fetch Debian kernel packages with apt, keep vmlinuz + config + modules, list and remove them.

Layout: ``<cache_dir>/kernels/<kver>/{vmlinuz,vmlinux,config,modules/,kernel.json}`` (vmlinux, the
uncompressed kernel that boots faster, only when :mod:`nexus.assets.vmlinux` could unpack it). A pull works in
a private temp dir under ``<cache_dir>/kernels`` and renames the finished directory into place, so a killed
pull never leaves a half kernel behind (its temp dir is swept by the next pull). Pulls are serialised by a
lock file.
This module does not build initramfs images (see :mod:`nexus.images.initramfs`).
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from nexus.assets import debian
from nexus.assets.digest import sha256_file
from nexus.assets.tools import require_tool, run_tool
from nexus.assets.vmlinux import extract_vmlinux
from nexus.domain.errors import Invalid, NotFound, Unavailable
from nexus.domain.models import Kernel

Progress = Callable[[str, float], None]

METADATA_FILE = "kernel.json"
_TMP_PREFIX = ".pull-"
_METADATA_FORMAT = 1


def _no_progress(_stage: str, _fraction: float) -> None:
    return None


class KernelStore:
    """Kernels cached under ``<cache_dir>/kernels``."""

    def __init__(self, cache_dir: Path, default_flavour: str = debian.DEFAULT_FLAVOUR) -> None:
        self._root = Path(cache_dir) / "kernels"
        self._default_flavour = default_flavour

    @property
    def root(self) -> Path:
        return self._root

    # -- reading -------------------------------------------------------------------------------------------

    def list(self) -> builtins.list[Kernel]:
        """Every complete cached kernel, newest first."""
        if not self._root.is_dir():
            return []
        kernels = [k for d in self._root.iterdir() if not d.name.startswith(".") and (k := _load(d))]
        return sorted(kernels, key=lambda k: debian.version_key(k.version), reverse=True)

    def get(self, ref: str | None = None) -> Kernel:
        """A cached kernel by exact version, or the newest cached kernel of a flavour. NotFound otherwise."""
        wanted = debian.parse_ref(ref, self._default_flavour)
        for kernel in self.list():
            if wanted.version == kernel.version or (wanted.version is None and kernel.flavour == wanted.flavour):
                return kernel
        what = wanted.version or f"of flavour {wanted.flavour}"
        raise NotFound(f"no cached kernel {what}; pull it first (cached: {self._names()})")

    def remove(self, version: str) -> None:
        """Delete one cached kernel (exact version). NotFound if it is not cached."""
        debian.split_kver(version)
        target = self._root / version
        if not (target / METADATA_FILE).is_file():
            raise NotFound(f"no cached kernel {version} (cached: {self._names()})")
        self._root.mkdir(parents=True, exist_ok=True)
        doomed = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self._root))
        target.rename(doomed / version)  # disappears atomically, then the bytes go
        shutil.rmtree(doomed, ignore_errors=True)

    # -- pulling -------------------------------------------------------------------------------------------

    def resolve(self, ref: str | None = None) -> str:
        """The exact kver ``ref`` names, asking apt for the newest one of a flavour when needed."""
        wanted = debian.parse_ref(ref, self._default_flavour)
        if wanted.version is not None:
            return wanted.version
        meta = debian.metapackage(wanted.flavour)
        unknown = f"apt knows no package {meta}: unknown kernel flavour {wanted.flavour!r}"
        try:
            done = run_tool(debian.apt_cache_depends_argv(meta), what=f"resolve {meta}", timeout_s=120)
        except Unavailable as exc:
            if debian.is_unknown_package(exc.message):
                raise NotFound(unknown) from exc
            raise
        if not done.stdout.strip():
            raise NotFound(unknown)
        try:
            return debian.parse_depends(done.stdout, wanted.flavour)
        except Invalid as exc:
            raise NotFound(exc.message) from exc

    def pull(self, version: str | None = None, progress: Progress | None = None) -> Kernel:
        """Fetch a kernel with apt unless it is cached; return it.

        ``version`` is an exact kver, an ABI ("6.1.0-56", default flavour), a flavour, or None (newest of the
        default flavour). ``progress(stage, fraction)`` is called as the pull advances.
        """
        report = progress or _no_progress
        report("resolve", 0.0)
        kver = self.resolve(version)
        cached = _load(self._root / kver)
        if cached is not None:
            report("cached", 1.0)
            return cached
        for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("depmod", "kmod")):
            require_tool(tool, package)
        with self._locked():
            cached = _load(self._root / kver)  # another process may have finished it meanwhile
            if cached is not None:
                report("cached", 1.0)
                return cached
            self._sweep()
            work = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=self._root))
            try:
                kernel = self._pull_into(work, kver, report)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        report("done", 1.0)
        return kernel

    def _pull_into(self, work: Path, kver: str, report: Progress) -> Kernel:
        package = debian.image_package(kver)
        report("download", 0.1)
        download = work / "download"
        download.mkdir()
        try:
            run_tool(
                debian.apt_download_argv(package, as_root=os.geteuid() == 0),
                what=f"download {package}",
                cwd=download,
                timeout_s=1800,
            )
        except Unavailable as exc:
            if debian.is_unknown_package(exc.message):
                raise NotFound(f"apt knows no kernel package {package}: unknown kernel version {kver}") from exc
            raise
        debs = sorted(download.glob("*.deb"))
        if len(debs) != 1:
            raise Unavailable(f"apt-get download {package} produced {len(debs)} .deb files, expected one")
        deb = debs[0]
        report("verify", 0.5)
        deb_sha256 = sha256_file(deb)
        package_version = run_tool(debian.dpkg_field_argv(deb, "Version"), what=f"read {deb.name}").stdout.strip()
        report("unpack", 0.6)
        tree = work / "tree"
        run_tool(debian.dpkg_extract_argv(deb, tree), what=f"unpack {deb.name}", timeout_s=600)
        deb.unlink()
        staged = work / kver
        staged.mkdir()
        _take(tree / "boot" / f"vmlinuz-{kver}", staged / "vmlinuz", package)
        _take(tree / "boot" / f"config-{kver}", staged / "config", package)
        report("vmlinux", 0.7)
        extract_vmlinux(staged / "vmlinuz", staged / "vmlinux")
        report("depmod", 0.8)
        depmod_root = work / "depmod"
        modules = depmod_root / "lib" / "modules" / kver
        modules.parent.mkdir(parents=True)
        for candidate in (tree / "lib" / "modules" / kver, tree / "usr" / "lib" / "modules" / kver):
            if candidate.is_dir():
                candidate.rename(modules)
                break
        else:
            raise Unavailable(f"{package} has no lib/modules/{kver} directory")
        run_tool(debian.depmod_argv(depmod_root, kver), what=f"index the modules of {kver}", timeout_s=600)
        modules.rename(staged / "modules")
        vmlinuz = staged / "vmlinuz"
        meta = {
            "format": _METADATA_FORMAT,
            "version": kver,
            "flavour": debian.split_kver(kver)[1],
            "package": package,
            "package_version": package_version,
            "deb_sha256": deb_sha256,
            "sha256": sha256_file(vmlinuz),
            "size_bytes": vmlinuz.stat().st_size,
            "pulled_at": datetime.now(UTC).isoformat(),
        }
        (staged / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        final = self._root / kver
        staged.rename(final)  # the one atomic step that makes the kernel visible
        kernel = _load(final)
        if kernel is None:
            raise Unavailable(f"kernel {kver} was unpacked but its metadata cannot be read back")
        return kernel

    # -- housekeeping --------------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._root.mkdir(parents=True, exist_ok=True)
        with (self._root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove temp dirs of pulls that died (only called while holding the lock)."""
        for stale in self._root.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _names(self) -> str:
        return ", ".join(k.version for k in self.list()) or "none"


def _take(src: Path, dest: Path, package: str) -> None:
    if not src.is_file():
        raise Unavailable(f"{package} does not contain {src.name}")
    src.rename(dest)


def _load(directory: Path) -> Kernel | None:
    """The kernel described by ``directory/kernel.json``, or None if the directory is not a complete kernel."""
    try:
        meta = json.loads((directory / METADATA_FILE).read_text())
        kernel = Kernel(
            version=str(meta["version"]),
            flavour=str(meta["flavour"]),
            vmlinuz=directory / "vmlinuz",
            config=directory / "config",
            modules_dir=directory / "modules",
            sha256=str(meta["sha256"]),
            size_bytes=int(meta["size_bytes"]),
            pulled_at=datetime.fromisoformat(str(meta["pulled_at"])),
            package_version=str(meta.get("package_version", "")),
            deb_sha256=str(meta.get("deb_sha256", "")),
            vmlinux=directory / "vmlinux" if (directory / "vmlinux").is_file() else None,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (kernel.vmlinuz.is_file() and kernel.config.is_file() and kernel.modules_dir.is_dir()):
        return None
    return kernel
