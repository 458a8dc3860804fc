"""Pure parts of the image builder: apt sources, debootstrap argv, agent files, metadata, ext4, python facts."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import sys
import tarfile
import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from nexus.domain.errors import Invalid
from nexus.images import bases, ext4, guestinfo, manifest
from nexus.images.agentinstall import (
    agent_files,
    install_agent,
    launcher_script,
    mcp_launcher_script,
    read_agent_version,
)
from nexus.images.builder import check_request
from nexus.images.pycompile import can_compile_for, compile_in_root

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
"""


def test_deb822_sources() -> None:
    found = bases.parse_deb822_sources(DEB822)
    assert found[0] == bases.AptSource("http://deb.debian.org/debian", ("bookworm", "bookworm-updates"))
    assert [s.uri for s in found] == ["http://deb.debian.org/debian", "http://deb.debian.org/debian-security"]


def test_one_line_sources() -> None:
    text = (
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    )
    found = bases.parse_one_line_sources(text)
    assert found[0] == bases.AptSource("http://mirror.example/debian", ("bookworm",))
    assert len(found) == 2


def test_choose_mirror() -> None:
    sources = [
        bases.AptSource("https://packages.cloud.google.com/apt", ("cloud-sdk-bookworm",)),
        bases.AptSource("http://ftp.example/debian", ("trixie",)),
        bases.AptSource("http://deb.debian.org/debian", ("bookworm",)),
    ]
    assert bases.choose_mirror(sources, "bookworm") == "http://deb.debian.org/debian"
    assert bases.choose_mirror(sources, "sid") == "http://ftp.example/debian"
    assert bases.choose_mirror([], "bookworm") == bases.DEFAULT_MIRROR


def test_debootstrap_argv_and_key() -> None:
    recipe = bases.DebootstrapRecipe("bookworm", "http://deb.debian.org/debian", ("python3-minimal", "x"))
    assert bases.debootstrap_argv(recipe, Path("/t")) == [
        "debootstrap",
        "--variant=minbase",
        "--include=python3-minimal,x",
        "bookworm",
        "/t",
        "http://deb.debian.org/debian",
    ]
    other = bases.DebootstrapRecipe("bookworm", "http://other/debian", ("python3-minimal", "x"))
    assert recipe.key != other.key and len(recipe.key) == 16


def test_debootstrap_progress_lines() -> None:
    assert bases.debootstrap_fraction("I: Retrieving InRelease") == 0.1
    assert bases.debootstrap_fraction("I: Configuring libc-bin...") == 0.8
    assert bases.debootstrap_fraction("W: something") is None


def test_unknown_base(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown base"):
        bases.BaseMaker(tmp_path).recipe("debian-potato")


def test_url_needs_sha256(tmp_path: Path) -> None:
    maker = bases.BaseMaker(tmp_path)
    with pytest.raises(Invalid, match="sha256"):
        maker.make("https://example.invalid/rootfs.tar.gz", tmp_path / "d")
    with pytest.raises(Invalid, match="64 hex"):
        maker.make("https://example.invalid/rootfs.tar.gz", tmp_path / "d", sha256="abc")


def test_tarball_sha256_mismatch(tmp_path: Path) -> None:
    tarball = tmp_path / "x.tar"
    tarball.write_bytes(b"not checked yet")
    with pytest.raises(Invalid, match="expected"):
        bases.BaseMaker(tmp_path).make(str(tarball), tmp_path, sha256="0" * 64)


def fake_package(root: Path) -> Path:
    pkg = root / "nexus"
    (pkg / "agent" / "tools").mkdir(parents=True)
    (pkg / "agent" / "__pycache__").mkdir()
    (pkg / "protocol").mkdir()
    (pkg / "api").mkdir()
    (pkg / "__init__.py").write_text('"""x"""\n__version__ = "1.2.3"\n')
    (pkg / "agent" / "__init__.py").write_text("")
    (pkg / "agent" / "__main__.py").write_text("print('agent')\n")
    (pkg / "agent" / "tools" / "files.py").write_text("X = 1\n")
    (pkg / "agent" / "__pycache__" / "junk.pyc").write_bytes(b"junk")
    (pkg / "agent" / "notes.txt").write_text("not code")
    (pkg / "protocol" / "__init__.py").write_text("")
    (pkg / "api" / "app.py").write_text("import fastapi\n")
    return pkg


def test_agent_files(tmp_path: Path) -> None:
    pkg = fake_package(tmp_path)
    rels = [rel for _src, rel in agent_files(pkg)]
    assert rels == [
        "__init__.py",
        "protocol/__init__.py",
        "agent/__init__.py",
        "agent/__main__.py",
        "agent/tools/files.py",
    ]
    assert read_agent_version(pkg) == "1.2.3"
    (pkg / "agent" / "__main__.py").unlink()
    with pytest.raises(Invalid, match="__main__"):
        agent_files(pkg)


def test_install_agent(tmp_path: Path) -> None:
    pkg, root = fake_package(tmp_path), tmp_path / "root"
    root.mkdir()
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert install_agent(root, pkg, minor) == "1.2.3"
    lib = root / "opt/nexus/lib/nexus"
    assert (lib / "agent/tools/files.py").read_text() == "X = 1\n"
    assert not (lib / "api").exists()
    assert Path(importlib.util.cache_from_source(str(lib / "agent/__main__.py"))).is_file()
    launcher = (root / "usr/local/bin/nexus-agent").read_text()
    assert launcher == launcher_script()
    assert "PYTHONPATH=/opt/nexus/lib" in launcher and "exec /usr/bin/python3 -S -m nexus.agent" in launcher
    mcp = root / "usr/local/bin/nexus-mcp"
    assert mcp.read_text() == mcp_launcher_script() and mcp.stat().st_mode & 0o777 == 0o755
    assert "exec /usr/bin/python3 -S -m nexus.agent.gateway_client" in mcp.read_text()


def test_pycompile_skips_symlinks_and_other_versions(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/python3.99"
    lib.mkdir(parents=True)
    (lib / "ok.py").write_text("A = 1\n")
    (lib / "outside.py").symlink_to("/etc/hostname")
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert not can_compile_for("3.99")
    assert compile_in_root(tmp_path, "/usr/lib/python3.99", "3.99") is None
    here = tmp_path / f"usr/lib/python{minor}"
    lib.rename(here)
    assert compile_in_root(tmp_path, f"/usr/lib/python{minor}", minor) == 1
    assert compile_in_root(tmp_path, f"/usr/lib/python{minor}", minor) == 0  # up to date now
    assert not Path(importlib.util.cache_from_source(str(here / "outside.py"))).exists()


def test_guest_python(tmp_path: Path) -> None:
    assert guestinfo.guest_python(tmp_path) is None
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/python3.11").write_text("")
    (tmp_path / "usr/bin/python3").symlink_to("python3.11")
    assert guestinfo.guest_python(tmp_path) == guestinfo.GuestPython("3.11", "3.11")
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(
        "Package: python3.11\nVersion: 9\n\nPackage: python3.11-minimal\nStatus: install ok installed\n"
        "Version: 3.11.2-6+deb12u6\n"
    )
    assert guestinfo.guest_python(tmp_path) == guestinfo.GuestPython("3.11", "3.11.2")


def test_apk_version() -> None:
    assert guestinfo.apk_version("P:musl\nV:1.2\n\nP:python3\nV:3.12.3-r1\n", "python3") == "3.12.3"


def test_manifest_round_trip(tmp_path: Path) -> None:
    built = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    image_id = manifest.image_id("dev", "abc", "1.0", built)
    assert image_id.startswith("img-") and image_id != manifest.image_id("dev", "abd", "1.0", built)
    image = manifest.Image(
        image_id, "dev", "debian-bookworm", tmp_path / "dev.ext4", 1024, "f" * 64, "busybox", built, "1.0", "3.11.2"
    )
    (tmp_path / "dev.ext4").write_bytes(b"")
    (tmp_path / "dev.json").write_text(manifest.sidecar(image))
    assert manifest.read_sidecar(tmp_path / "dev.json") == image
    assert manifest.list_images(tmp_path) == [image]
    guest = manifest.guest_manifest(image, "1")
    assert '"id": "' + image_id in guest and '"python_version": "3.11.2"' in guest
    (tmp_path / "dev.ext4").unlink()
    assert manifest.list_images(tmp_path) == []


def test_mke2fs_argv() -> None:
    argv = ext4.mke2fs_argv(Path("/tree"), Path("/out.ext4"), 1024)
    assert argv[0] == "mke2fs" and "-d" in argv and argv[argv.index("-d") + 1] == "/tree"
    assert argv[-2:] == ["/out.ext4", "1024M"] and "-F" in argv
    assert argv[argv.index("-t") + 1] == "ext4" and argv[argv.index("-b") + 1] == "4096"
    assert "root_owner=0:0" in argv[argv.index("-E") + 1]


def test_size_estimate(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (3 << 20))
    used, inodes = ext4.tree_usage(tmp_path)
    assert used >= 3 << 20 and inodes == 2
    assert ext4.min_size_mib(300 << 20, 8000) > 330


def test_request_checks() -> None:
    check_request("debian-dev.1", 512)
    for name in ("", "Bad", "../x", "a" * 70):
        with pytest.raises(Invalid):
            check_request(name, 512)
    with pytest.raises(Invalid):
        check_request("ok", 10)


def test_url_base_is_downloaded_verified_and_cached(tmp_path: Path) -> None:
    served = tmp_path / "served"
    (served / "tree" / "etc").mkdir(parents=True)
    (served / "tree" / "etc" / "os-release").write_text("ID=test\n")
    with tarfile.open(served / "rootfs.tar.gz", "w:gz") as archive:
        archive.add(served / "tree", arcname=".")
    digest = hashlib.sha256((served / "rootfs.tar.gz").read_bytes()).hexdigest()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/rootfs.tar.gz"
        maker = bases.BaseMaker(tmp_path / "cache")
        dest = tmp_path / "dest"
        dest.mkdir()
        info = maker.make(url, dest, sha256=digest.upper())
        assert info == bases.BaseInfo("rootfs.tar.gz", digest)
        assert (dest / "etc" / "os-release").read_text() == "ID=test\n"
        assert (tmp_path / "cache" / "bases" / "downloads" / f"{digest}.tarball").is_file()
        with pytest.raises(Invalid, match="expected"):
            maker.make(url, tmp_path / "other", sha256="1" * 64)
        assert not [p for p in (tmp_path / "cache" / "bases" / "downloads").iterdir() if p.name.startswith(".")]
    finally:
        server.shutdown()
        server.server_close()
