"""Kernel references, apt output parsing, and the kernel cache (pull with apt replaced by a local .deb)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from nexus.assets import debian, kernels
from nexus.assets.kernels import KernelStore
from nexus.assets.tools import run_tool
from nexus.domain.errors import Invalid, NotFound, Unavailable

KVER = "9.9.9-1-cloud-amd64"


def test_parse_ref() -> None:
    assert debian.parse_ref(None) == debian.KernelRef("cloud-amd64", None)
    assert debian.parse_ref("6.1.0-56") == debian.KernelRef("cloud-amd64", "6.1.0-56-cloud-amd64")
    assert debian.parse_ref("6.1.0-56-amd64") == debian.KernelRef("amd64", "6.1.0-56-amd64")
    assert debian.parse_ref("rt-amd64") == debian.KernelRef("rt-amd64", None)
    for bad in ("6.1", "../etc", "6.1.0-56-"):
        with pytest.raises(Invalid):
            debian.parse_ref(bad)


def test_parse_depends_picks_the_versioned_package() -> None:
    out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
    assert debian.parse_depends(out, "cloud-amd64") == "6.1.0-56-cloud-amd64"
    many = out + "  Depends: linux-image-6.1.0-9-cloud-amd64\n  Depends: linux-image-6.1.0-60-cloud-amd64\n"
    assert debian.parse_depends(many, "cloud-amd64") == "6.1.0-60-cloud-amd64"
    with pytest.raises(Invalid):
        debian.parse_depends("linux-image-cloud-amd64\n  Depends: something-else\n", "cloud-amd64")


def test_version_key_is_natural() -> None:
    assert debian.version_key("6.1.0-9-cloud-amd64") < debian.version_key("6.1.0-56-cloud-amd64")


def test_unknown_package_detection() -> None:
    assert debian.is_unknown_package("E: Unable to locate package linux-image-9-cloud-amd64")
    assert debian.is_unknown_package("E: No packages found")
    assert not debian.is_unknown_package("E: Failed to fetch http://deb.debian.org/... 503")


def test_argv_builders() -> None:
    assert debian.apt_download_argv("p", as_root=False) == ["apt-get", "download", "-q", "p"]
    assert "APT::Sandbox::User=root" in debian.apt_download_argv("p", as_root=True)
    assert debian.apt_cache_depends_argv("m") == ["apt-cache", "depends", "--important", "m"]
    assert debian.dpkg_extract_argv(Path("/a.deb"), Path("/t")) == ["dpkg-deb", "-x", "/a.deb", "/t"]
    assert debian.depmod_argv(Path("/r"), KVER) == ["depmod", "-b", "/r", KVER]


def make_deb(tmp_path: Path, kver: str = KVER) -> Path:
    tree = tmp_path / "debroot"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: linux-image-{kver}\nVersion: 9.9.9-1\nArchitecture: amd64\nMaintainer: t <t@t>\n"
        "Description: test kernel\n"
    )
    (tree / "boot").mkdir()
    (tree / "boot" / f"vmlinuz-{kver}").write_bytes(b"not really a bzImage" * 100)
    (tree / "boot" / f"config-{kver}").write_text("CONFIG_VIRTIO_MMIO=m\n")
    mod = tree / "lib" / "modules" / kver / "kernel" / "drivers" / "virtio"
    mod.mkdir(parents=True)
    (mod / "virtio_mmio.ko").write_bytes(b"\x7fELF fake module")
    deb = tmp_path / f"linux-image-{kver}_9.9.9-1_amd64.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True, capture_output=True
    )
    return deb


@pytest.fixture
def fake_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    if shutil.which("dpkg-deb") is None or shutil.which("depmod") is None:
        pytest.skip("dpkg-deb and depmod are needed")
    deb = make_deb(tmp_path)
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        if argv[0] == "apt-cache":
            if argv[-1] != "linux-image-cloud-amd64":
                raise Unavailable("cannot resolve: apt-cache exited with 100:\nE: No packages found")
            return subprocess.CompletedProcess(argv, 0, f"{argv[-1]}\n  Depends: linux-image-{KVER}\n", "")
        if argv[0] == "apt-get":
            if argv[-1] != f"linux-image-{KVER}":
                raise Unavailable(f"cannot download: apt-get exited with 100:\nE: Unable to locate package {argv[-1]}")
            shutil.copy(deb, Path(str(kwargs["cwd"])) / deb.name)
            return subprocess.CompletedProcess(argv, 0, "", "")
        return run_tool(argv, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels, "run_tool", fake_run)
    return calls


def test_pull_list_get_remove(tmp_path: Path, fake_apt: list[list[str]]) -> None:
    store = KernelStore(tmp_path / "cache")
    assert store.list() == []
    progress: list[str] = []
    kernel = store.pull(progress=lambda stage, fraction: progress.append(stage))
    assert kernel.version == KVER and kernel.flavour == "cloud-amd64" and kernel.package_version == "9.9.9-1"
    assert kernel.vmlinuz.read_bytes().startswith(b"not really") and kernel.vmlinux is None
    assert kernel.boot_file == kernel.vmlinuz
    assert kernel.size_bytes == kernel.vmlinuz.stat().st_size and len(kernel.sha256) == 64
    assert len(kernel.deb_sha256) == 64
    assert (kernel.modules_dir / "modules.dep").is_file()
    assert (kernel.modules_dir / "kernel/drivers/virtio/virtio_mmio.ko").is_file()
    assert progress[0] == "resolve" and progress[-1] == "done"
    meta = json.loads((kernel.dir / "kernel.json").read_text())
    assert meta["version"] == KVER and meta["sha256"] == kernel.sha256
    assert not list((tmp_path / "cache" / "kernels").glob(".pull-*"))  # nothing half-done left
    assert store.list() == [kernel]
    assert store.get() == kernel and store.get(KVER) == kernel and store.get("9.9.9-1") == kernel
    downloads = sum(1 for c in fake_apt if c[0] == "apt-get")
    assert store.pull(KVER) == kernel  # cached: no second download
    assert sum(1 for c in fake_apt if c[0] == "apt-get") == downloads
    store.remove(KVER)
    assert store.list() == []
    with pytest.raises(NotFound):
        store.remove(KVER)
    with pytest.raises(NotFound):
        store.get()


def test_unknown_version_and_flavour(tmp_path: Path, fake_apt: list[list[str]]) -> None:
    store = KernelStore(tmp_path / "cache")
    with pytest.raises(NotFound, match="unknown kernel version"):
        store.pull("9.9.8-1")
    with pytest.raises(NotFound, match="unknown kernel flavour"):
        store.pull("nosuch-amd64")
    assert store.list() == []


def test_apt_failure_is_unavailable_with_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise Unavailable("cannot download x: apt-get exited with 100:\nE: Failed to fetch http://mirror 503")

    monkeypatch.setattr(kernels, "run_tool", broken)
    monkeypatch.setattr(kernels, "require_tool", lambda name, package: name)
    with pytest.raises(Unavailable, match="503"):
        KernelStore(tmp_path).pull(KVER)


def test_incomplete_dirs_are_not_kernels(tmp_path: Path) -> None:
    root = tmp_path / "kernels"
    (root / KVER).mkdir(parents=True)
    (root / KVER / "kernel.json").write_text("{broken")
    (root / ".pull-abc").mkdir()
    assert KernelStore(tmp_path).list() == []


def test_killed_pull_leftovers_are_swept(tmp_path: Path, fake_apt: list[list[str]]) -> None:
    stale = tmp_path / "cache" / "kernels" / ".pull-dead"
    (stale / KVER).mkdir(parents=True)
    KernelStore(tmp_path / "cache").pull()
    assert not stale.exists()
