"""nexusctl against a real nexusd on a temporary socket: output, --json, and every exit code."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.cli.main import main
from tests.helpers import Daemon, start_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A real nexusd on a host without QEMU (an empty PATH): no VMM driver, so nothing boots."""
    d = start_daemon(tmp_path, env={"PATH": str(tmp_path / "empty-path")})
    try:
        yield d
    finally:
        d.stop()


def run(capsys: pytest.CaptureFixture[str], daemon: Daemon | Path, *args: str) -> tuple[int, str, str]:
    sock = daemon.socket if isinstance(daemon, Daemon) else daemon
    code = main(["--socket", str(sock), *args])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], daemon: Daemon, *args: str) -> Any:
    code, out, err = run(capsys, daemon, "--json", *args)
    assert code == 0, err
    return json.loads(out)  # exactly one document: json.loads fails on trailing text


def test_vm_lifecycle_without_driver(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, _ = run(capsys, daemon, "vm", "create", "web", "--vcpus", "2", "--mem", "256", "--tag", "a")
    assert code == 0
    assert out.startswith("created web (")

    vm = run_json(capsys, daemon, "vm", "inspect", "web")
    assert isinstance(vm, dict)
    assert (vm["vcpus"], vm["mem_mib"], vm["tags"], vm["state"]) == (2, 256, ["a"], "created")

    code, out, _ = run(capsys, daemon, "vm", "list")
    assert code == 0
    assert "web" in out
    assert "created" in out
    assert "NAME" in out
    assert run_json(capsys, daemon, "vm", "list", "--tag", "nope") == []

    code, _, err = run(capsys, daemon, "vm", "start", "web")
    assert code == 1
    assert err == "nexusctl: no VMM driver available: qemu-system-x86_64 not found (apt-get install qemu-system-x86)\n"

    code, _, err = run(capsys, daemon, "vm", "stop", "web")
    assert code == 5
    assert "nothing to stop" in err

    history = run_json(capsys, daemon, "vm", "history", "web")
    assert isinstance(history, list)
    assert [h["to_state"] for h in history] == ["created"]
    assert run_json(capsys, daemon, "vm", "logs", "web", "--tail", "5") == {"vm_id": vm["id"], "lines": []}

    assert run_json(capsys, daemon, "vm", "tag", "add", "web", "b", "c") == ["a", "b", "c"]
    assert run_json(capsys, daemon, "vm", "tag", "rm", "web", "a") == ["b", "c"]
    assert run_json(capsys, daemon, "vm", "tag", "ls", "web") == ["b", "c"]

    code, out, _ = run(capsys, daemon, "vm", "rm", "web")
    assert (code, out) == (0, "removed web\n")
    assert run_json(capsys, daemon, "vm", "list") == []


def test_exit_codes(capsys: pytest.CaptureFixture[str], daemon: Daemon, tmp_path: Path) -> None:
    # 2: usage (missing argument, bad option, invalid value caught by the daemon)
    assert run(capsys, daemon, "vm", "create")[0] == 2
    assert run(capsys, daemon, "vm", "list", "--bogus")[0] == 2
    code, _, err = run(capsys, daemon, "vm", "create", "Bad_Name")
    assert code == 2
    assert err.startswith("nexusctl: invalid name")
    assert err.count("\n") == 1
    assert run(capsys, daemon, "vm", "create", "x", "--vcpus", "64")[0] == 2
    # 3: daemon unreachable
    code, _, err = run(capsys, tmp_path / "no.sock", "vm", "list")
    assert code == 3
    assert "cannot reach nexusd" in err
    # 4: not found
    code, _, err = run(capsys, daemon, "vm", "inspect", "ghost")
    assert (code, err) == (4, "nexusctl: no VM named or with id 'ghost'\n")
    assert run(capsys, daemon, "settings", "get", "colour")[0] == 4
    # 5: conflict
    assert run(capsys, daemon, "vm", "create", "dup")[0] == 0
    code, _, err = run(capsys, daemon, "vm", "create", "dup")
    assert code == 5
    assert "already exists" in err
    # 1: other errors
    assert run(capsys, daemon, "vm", "start", "dup")[0] == 1
    # 0 again, and nothing was changed by the failures
    assert [v["name"] for v in run_json(capsys, daemon, "vm", "list")] == ["dup"]


def test_rm_refuses_running_vm_unless_forced(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    from nexus.store import VmRepo, connect

    run(capsys, daemon, "vm", "create", "busy")
    # No driver exists yet to really start it: put the row in a state with a process, as a start would.
    conn = connect(daemon.state_dir / "nexus.db")
    repo = VmRepo(conn)
    vm = repo.get("busy")
    from nexus.domain import VmState

    repo.set_state(vm.id, VmState.CREATED, VmState.STARTING, "test")
    repo.set_state(vm.id, VmState.STARTING, VmState.READY, "test")
    conn.close()
    code, _, err = run(capsys, daemon, "vm", "rm", "busy")
    assert code == 5
    assert "stop it first" in err
    assert run_json(capsys, daemon, "vm", "inspect", "busy")["state"] == "ready"
    # --force stops it first; with no process behind the row, that only settles the state.
    assert run(capsys, daemon, "vm", "rm", "--force", "busy")[0] == 0
    assert run(capsys, daemon, "vm", "inspect", "busy")[0] == 4


def test_settings_and_status(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, _ = run(capsys, daemon, "settings", "list")
    assert code == 0
    assert "default_image" in out
    assert run(capsys, daemon, "settings", "set", "default_vcpus", "4")[1] == "default_vcpus = 4\n"
    assert run(capsys, daemon, "settings", "get", "default_vcpus")[1] == "4\n"
    assert run(capsys, daemon, "settings", "set", "vmm", "xen")[0] == 2
    assert run_json(capsys, daemon, "settings", "get", "vmm")["value"] == "auto"
    out = run(capsys, daemon, "settings", "set", "vmm", "qemu")[1]  # applies at once, and says so
    assert out.startswith("vmm = qemu\nVMs started from now on: none (qemu-system-x86_64 not found"), out
    assert out.endswith("; running VMs keep theirs\n")

    health = run_json(capsys, daemon, "status")
    assert health["status"] == "ok"
    code, out, _ = run(capsys, daemon, "status")
    assert "vmm      none (qemu-system-x86_64 not found" in out
    assert "storage  copy (" in out or "storage  reflink (" in out
    assert run_json(capsys, daemon, "version") == {"client": "0.1.0", "daemon": "0.1.0"}


def test_console_scripts_and_env_socket(daemon: Daemon) -> None:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "NEXUS_SOCKET": str(daemon.socket)}
    out = subprocess.run(
        [bindir / "nexusctl", "vm", "list", "--json"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
    done = subprocess.run([bindir / "nexusd", "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("nexusd ")


def test_socket_mode_and_clean_shutdown(tmp_path: Path) -> None:
    d = start_daemon(tmp_path)
    try:
        assert stat.S_IMODE(d.socket.stat().st_mode) == 0o660
        # A second daemon on the same socket refuses instead of stealing it.
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "nexus.daemon.main",
                "--state-dir",
                str(tmp_path / "s2"),
                "--socket",
                str(d.socket),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1
        assert "already serving" in second.stderr
    finally:
        assert d.stop() == 0
    assert not d.socket.exists()
    assert "nexusd stopped" in d.log_text()


def test_tcp_listener_needs_token(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    no_token = subprocess.run(
        [
            sys.executable,
            "-m",
            "nexus.daemon.main",
            "--state-dir",
            str(tmp_path / "x"),
            "--socket",
            str(tmp_path / "x.sock"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert no_token.returncode == 1
    assert "needs --token-file" in no_token.stderr

    token_file = tmp_path / "token"
    token_file.write_text("tcp-token-abcdefghijklmnop\n")
    token_file.chmod(0o600)
    d = start_daemon(tmp_path, "--listen", f"127.0.0.1:{port}", "--token-file", str(token_file))
    try:
        url = f"http://127.0.0.1:{port}/v1/health"
        r = httpx.get(url)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert httpx.get(url, headers={"authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer tcp-token-abcdefghijklmnop"}).status_code == 200
        # The Unix socket needs no token: its file mode guards it.
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket))) as c:
            assert c.get("http://nexusd/v1/health").status_code == 200
    finally:
        d.stop()
