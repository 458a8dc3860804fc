"""``nexusctl image build`` with packages, profiles and --from-vm against a real nexusd (no VMM driver, nothing
boots or builds): every refusal is one line on stderr with its exit code, and nothing is registered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus.cli.main import main
from nexus.domain import Image, ImageOrigin, utcnow
from nexus.store import ImageRepo, open_database
from tests.helpers import Daemon, start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One nexusd for the module, with a VM "web" that was never started."""
    base = tmp_path_factory.mktemp("cli-images")
    d = start_daemon(base, env={"PATH": str(base / "empty-path")})
    try:
        assert main(["--socket", str(d.socket), "vm", "create", "web"]) == 0
        yield d
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--packages", "git,Bad"], 2, "invalid package name 'Bad'"),
        (["--packages", "git=2.39"], 2, "version pins are not supported"),
        (["--profile", "gpu"], 2, "unknown profile 'gpu'; known: dev"),
        (["--base", "/tmp/rootfs.tar", "--sha256", "0" * 64, "--packages", "git"], 2, "debian-<suite> base only"),
        (["--from-vm", "nope"], 4, "nope"),
        (["--from-vm", "web"], 5, "VM web has no root drive yet"),
        (["--from-vm", "web", "--packages", "git"], 2, "packages cannot go with it"),
        (["--from-vm", "web", "--name", "Bad"], 2, "invalid name 'Bad'"),
    ],
)
def test_refusals_are_one_line_and_change_nothing(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    if "/tmp/rootfs.tar" in args:
        (tmp_path / "rootfs.tar").write_bytes(b"")
        args = [str(tmp_path / "rootfs.tar") if a == "/tmp/rootfs.tar" else a for a in args]
    capsys.readouterr()
    assert main(["--socket", str(daemon.socket), "image", "build", *args]) == code
    out, err = capsys.readouterr()
    # one line (the progress bar, gone when it stops, may leave an empty one on a stderr that is no terminal)
    assert out == "" and message in err and err.strip().count("\n") == 0, err
    assert main(["--socket", str(daemon.socket), "--json", "image", "list"]) == 0
    assert capsys.readouterr().out.strip() == "[]"
    assert (
        sorted(p.name for p in (daemon.state_dir / "images").glob("*")) == []
        if (daemon.state_dir / "images").exists()
        else True
    )


def test_inspect_shows_packages_and_origin(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    conn = open_database(daemon.state_dir / "nexus.db")
    try:
        ImageRepo(conn).insert(
            Image(
                id="img-saved",
                name="saved",
                base="debian-bookworm",
                path=daemon.state_dir / "saved.ext4",
                size_mib=1536,
                sha256="0" * 64,
                init_system="busybox",
                agent_version="0.1.0",
                built_at=utcnow(),
                packages=("git", "jq"),
                origin=ImageOrigin(vm_id="a1b2c3d4e5f6", vm_name="web", image="debian-bookworm"),
            )
        )
    finally:
        conn.close()
    try:
        assert main(["--socket", str(daemon.socket), "image", "inspect", "saved"]) == 0
        out = capsys.readouterr().out
        assert "git, jq" in out and "VM web (a1b2c3d4e5f6), made from image debian-bookworm" in out
        assert main(["--socket", str(daemon.socket), "--json", "image", "inspect", "saved"]) == 0
        image = json.loads(capsys.readouterr().out)
        assert image["packages"] == ["git", "jq"]
        assert image["origin"] == {"vm_id": "a1b2c3d4e5f6", "vm_name": "web", "image": "debian-bookworm"}
    finally:
        assert main(["--socket", str(daemon.socket), "image", "rm", "saved"]) == 0
