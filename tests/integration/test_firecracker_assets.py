"""Firecracker release pulls from a release server on loopback, checked against a sha256 pinned in nexus or given
by the user (never only the one the server publishes beside the tarball), and local binaries registered by path."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.assets.firecracker import PINNED_SHA256, FirecrackerStore
from nexus.domain import Invalid, NotFound, Unavailable

ARCH = "x86_64"


def fake_binary(version: str, name: str = "Firecracker") -> bytes:
    return f"#!/bin/sh\necho '{name} v{version}'\n".encode()


def release_tarball(version: str, reported: str | None = None) -> bytes:
    folder = f"release-v{version}-{ARCH}"
    files = {
        f"{folder}/firecracker-v{version}-{ARCH}": fake_binary(reported or version),
        f"{folder}/firecracker-v{version}-{ARCH}.debug": b"\x7fELF debug symbols",
        f"{folder}/jailer-v{version}-{ARCH}": fake_binary(version, "Jailer"),
        f"{folder}/SHA256SUMS": b"whatever\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def release_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A loopback HTTP server publishing whatever the test puts in the returned dict (path → bytes)."""
    published: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = published.get(self.path)
            self.send_response(200 if data is not None else 404)
            self.send_header("content-length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/releases", published
    finally:
        server.shutdown()
        server.server_close()


def publish(published: dict[str, bytes], version: str, tarball: bytes) -> str:
    """Serve ``tarball`` as the release, with a matching .sha256.txt beside it (as a rogue mirror would); its sum."""
    name = f"firecracker-v{version}-{ARCH}.tgz"
    published[f"/releases/v{version}/{name}"] = tarball
    digest = hashlib.sha256(tarball).hexdigest()
    published[f"/releases/v{version}/{name}.sha256.txt"] = f"{digest}  {name}\n".encode()
    return digest


def no_progress(_stage: str, _fraction: float) -> None:
    return None


def test_pull_verifies_unpacks_and_caches(tmp_path: Path, release_server: tuple[str, dict[str, bytes]]) -> None:
    base, published = release_server
    digest = publish(published, "1.16.1", release_tarball("1.16.1"))
    store = FirecrackerStore(tmp_path, arch=ARCH)
    binary = store.pull("v1.16.1", base, no_progress, sha256=digest)
    assert binary.version == "1.16.1"
    assert binary.path.read_bytes() == fake_binary("1.16.1")
    assert binary.jailer is not None
    assert sorted(p.name for p in binary.path.parent.iterdir()) == ["firecracker", "firecracker.json", "jailer"]
    assert store.get().version == "1.16.1"
    assert [b.version for b in store.list()] == ["1.16.1"]
    store.remove("1.16.1")
    with pytest.raises(NotFound):
        store.get()


def test_a_server_that_publishes_its_own_sum_is_not_believed(
    tmp_path: Path, release_server: tuple[str, dict[str, bytes]]
) -> None:
    base, published = release_server
    publish(published, "1.16.1", release_tarball("1.16.1"))  # tarball and .sha256.txt agree; the pin does not
    store = FirecrackerStore(tmp_path, arch=ARCH)
    pinned = PINNED_SHA256[("1.16.1", ARCH)]
    with pytest.raises(Unavailable, match=f"not {pinned} \\(the one pinned in nexus\\); nothing installed"):
        store.pull("1.16.1", base, no_progress)
    with pytest.raises(Unavailable, match="the one given with --sha256"):
        store.pull("1.16.1", base, no_progress, sha256="0" * 64)
    assert store.list() == []
    assert [p.name for p in (tmp_path / "firecracker").iterdir()] == []


def test_binary_that_lies_about_its_version_is_refused(
    tmp_path: Path, release_server: tuple[str, dict[str, bytes]]
) -> None:
    base, published = release_server
    digest = publish(published, "1.16.1", release_tarball("1.16.1", reported="1.2.3"))
    store = FirecrackerStore(tmp_path, arch=ARCH)
    with pytest.raises(Invalid, match=r"not 1\.16\.1"):
        store.pull("1.16.1", base, no_progress, sha256=digest)
    assert store.list() == []


def test_unknown_version_and_bad_input(tmp_path: Path, release_server: tuple[str, dict[str, bytes]]) -> None:
    base, published = release_server
    publish(published, "9.9.9", release_tarball("9.9.9"))
    store = FirecrackerStore(tmp_path, arch=ARCH)
    with pytest.raises(Invalid, match=r"no pinned sha256 for Firecracker 9\.9\.9 .* --sha256"):
        store.pull("9.9.9", base, no_progress)  # refused before anything is fetched
    with pytest.raises(Unavailable, match="cannot download"):
        store.pull("9.9.8", base, no_progress, sha256="0" * 64)
    with pytest.raises(Invalid, match=r"look like 1\.16\.1"):
        store.pull("latest; rm -rf /", base, no_progress)
    assert store.list() == []


def test_local_binary_is_registered_by_path(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "firecracker"
    binary.parent.mkdir()
    binary.write_bytes(fake_binary("1.15.0"))
    binary.chmod(0o755)
    store = FirecrackerStore(tmp_path / "cache", arch=ARCH)
    registered = store.add_local(binary)
    assert registered.version == "1.15.0"
    assert registered.path.resolve() == binary
    assert registered.source == str(binary)
    not_fc = tmp_path / "bin" / "other"
    not_fc.write_bytes(b"#!/bin/sh\necho hello\n")
    not_fc.chmod(0o755)
    with pytest.raises(Invalid, match="does not say it is Firecracker"):
        store.add_local(not_fc)
    assert [b.version for b in store.list()] == ["1.15.0"]


def test_nexusctl_firecracker_commands(
    tmp_path: Path, release_server: tuple[str, dict[str, bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from nexus.cli.main import main
    from tests.helpers import start_daemon

    base, published = release_server
    digest = publish(published, "1.16.1", release_tarball("1.16.1"))
    publish(published, "2.0.0", release_tarball("2.0.0"))
    daemon = start_daemon(tmp_path)
    try:
        sock = ["--socket", str(daemon.socket)]
        assert main([*sock, "settings", "set", "firecracker_base_url", base]) == 0
        capsys.readouterr()
        assert main([*sock, "firecracker", "pull"]) == 1  # the fake tarball is not the release nexus pinned
        assert "the one pinned in nexus" in capsys.readouterr().err
        # the version comes from the settings
        assert main([*sock, "--json", "firecracker", "pull", "--sha256", digest]) == 0
        pulled = json.loads(capsys.readouterr().out)
        assert pulled["version"] == "1.16.1"
        assert main([*sock, "--json", "firecracker", "list"]) == 0
        assert [b["version"] for b in json.loads(capsys.readouterr().out)] == ["1.16.1"]
        assert main([*sock, "firecracker", "pull", "2.0.0"]) == 2
        assert "nexusctl firecracker pull 2.0.0 --sha256 <sha256 of firecracker-v2.0.0-" in capsys.readouterr().err
        assert main([*sock, "firecracker", "rm", "1.16.1"]) == 0
        assert main([*sock, "firecracker", "rm", "1.16.1"]) == 4
    finally:
        daemon.stop()
