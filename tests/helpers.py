"""Test helpers: waiting for a condition, running a real nexusd, a btrfs on a loop device."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import pytest
from mcp.shared.exceptions import MCPError

if TYPE_CHECKING:
    from mcp import Client
    from mcp.types import CallToolResult

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on just now (for a daemon's --listen, a test server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Call ``probe`` until it returns something truthy; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except Exception as exc:
            last_exc = exc
        else:
            if result:
                return result
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_exc!r})")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: Path
    state_dir: Path
    runtime_dir: Path
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_daemon(
    base: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    state_dir: Path | None = None,
    network: bool = False,
    prefix: tuple[str, ...] = (),
    stop_vms_on_exit: bool = True,
) -> Daemon:
    """Start a real nexusd with its files under ``base`` (state too, unless ``state_dir``); return once its API
    answers. Without ``network`` it runs with ``--no-network``: a test daemon in the host's own namespace must
    never make bridges or rules there. ``prefix`` goes before the command (``ip netns exec NS``). A test daemon
    powers its VMs off when stopped, so no test leaves a VM running, unless ``stop_vms_on_exit`` is False (live
    restore tests, which stop their VMs themselves)."""
    from tests.api_client import NexusClient

    state, run, sock, log = state_dir or base / "state", base / "run", base / "nexusd.sock", base / "nexusd.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "nexus.daemon.main",
                "--state-dir",
                str(state),
                "--runtime-dir",
                str(run),
                "--socket",
                str(sock),
                *(() if network else ("--no-network",)),
                *(("--stop-vms-on-exit",) if stop_vms_on_exit else ()),
                *extra,
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    daemon = Daemon(proc, sock, state, run, log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"nexusd exited with {proc.returncode}:\n{daemon.log_text()}")
        with NexusClient(sock, timeout_s=2) as client:
            status: str = client.health()["status"]
            return status == "ok"

    try:
        wait_until(up, 20, "nexusd to answer on its socket")
    except BaseException:
        daemon.stop()
        raise
    return daemon


@contextlib.contextmanager
def btrfs_mount(base: Path, size: str = "512M") -> Iterator[Path]:
    """A fresh btrfs on a loop device, mounted at ``base/mnt``; unmounted and detached however the test ends."""
    if os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None:
        pytest.skip("a btrfs on a loop device needs root and mkfs.btrfs (apt-get install btrfs-progs)")
    from bench.common import loop_btrfs

    with loop_btrfs(base, size) as mnt:
        yield mnt


async def call_killing_vmm(
    client: Client, tool: str, args: dict[str, Any], pid: int, timeout_s: float
) -> CallToolResult | MCPError:
    """Call MCP ``tool`` asking for progress, SIGKILL the VMM ``pid`` once the first progress arrives (the tool is
    running), and return what the call ended with: its result, or the MCPError it raised. Fails the test if the
    call does not end within ``timeout_s``."""
    running = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:  # ProgressFnT
        running.set()

    async def kill_when_running() -> None:
        await running.wait()
        os.kill(pid, signal.SIGKILL)

    outcome: CallToolResult | MCPError  # set below, or the block raises
    with anyio.fail_after(timeout_s):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_when_running)
            try:
                outcome = await client.call_tool(tool, args, progress_callback=on_progress)
            except MCPError as exc:
                outcome = exc
    return outcome


def tree_listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``root``: type, mode, mtime (seconds), and content digest and link count, or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(here) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), int(st.st_mtime))
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), digest, st.st_nlink)
    return out
