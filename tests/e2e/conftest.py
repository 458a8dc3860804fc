"""Real VMs under QEMU through a real nexusd. One daemon per test session; its state dir persists across
sessions (``NEXUS_E2E_STATE``, default /var/tmp/nexus-e2e) so the kernel and base are fetched once per machine,
and the image once per version of the guest agent: it is named after a digest of the agent files this checkout
would install (``AGENT_IMAGE``) and made the default image, so every e2e VM runs the agent under test, never
one left from an older checkout. Each test names its VMs ``e2e-...`` and removes them; leftovers of an
interrupted run are removed when the session starts."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bench.common import link_cache

from nexus.domain import Layout
from nexus.images.agentinstall import agent_digest
from nexus.services import SettingsService
from nexus.store import ImageRepo, SettingsRepo, open_database
from tests.api_client import NexusClient
from tests.helpers import REPO, Daemon, start_daemon

STATE = Path(os.environ.get("NEXUS_E2E_STATE", "/var/tmp/nexus-e2e"))
NEXUSCTL = str(Path(sys.executable).parent / "nexusctl")
AGENT_IMAGE_PREFIX = "e2e-agent-"
IMAGE_SIZE_MIB = 1024


AGENT_IMAGE = AGENT_IMAGE_PREFIX + agent_digest(REPO / "src" / "nexus")


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "e2e VM tests need root (debootstrap, image ownership)"
    for tool in ("qemu-system-x86_64", "debootstrap", "mke2fs", "apt-get"):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    return None


@pytest.fixture(scope="session")
def e2e_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    reason = _usable()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("e2e")
    config = base / "nexusd.toml"
    config.write_text("boot_timeout_s = 60\nheartbeat_timeout_s = 4\nstop_timeout_s = 10\n")
    daemon = start_daemon(base, "--config", str(config), state_dir=STATE)
    try:
        with NexusClient(daemon.socket, timeout_s=120) as client:
            for vm in client.list_vms():
                if vm["name"].startswith("e2e-"):
                    client.remove_vm(vm["id"], force=True)
            # Fetch and build once, up front, with generous time: later starts then only boot.
            for _ in client.stream("POST", "/v1/kernels/pull", json={"version": None}):
                pass
            images = {i["name"] for i in client.list_images()}
            if AGENT_IMAGE not in images:
                for _ in client.build_image(base="debian-bookworm", name=AGENT_IMAGE, size_mib=IMAGE_SIZE_MIB):
                    pass
            client.set_setting("default_image", AGENT_IMAGE)
            for stale in images:  # images of older agents: nothing uses them once the leftover VMs are gone
                if stale.startswith(AGENT_IMAGE_PREFIX) and stale != AGENT_IMAGE:
                    client.remove_image(stale)
        yield daemon
    finally:
        code = daemon.stop()
        if code != 0:
            print(daemon.log_text()[-5000:])


@pytest.fixture
def api(e2e_daemon: Daemon) -> Iterator[NexusClient]:
    with NexusClient(e2e_daemon.socket, timeout_s=300) as client:
        yield client


def nexusctl(
    daemon: Daemon, *args: str, input: bytes | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [NEXUSCTL, "--socket", str(daemon.socket), *args], input=input, capture_output=True, timeout=300
    )
    if check and done.returncode != 0:
        raise AssertionError(f"nexusctl {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
    return done


def nexusctl_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(nexusctl(daemon, "--json", *args).stdout)


def linked_state(base: Path, vmm: str) -> Path:
    """A state dir of its own for a test's own nexusd (one nexusd per state dir): its kernel cache links to the
    shared one (initramfs copied: nexusd may rebuild it), its database knows the shared images, the agent image
    is the default and ``vmm`` is set. Call it once the session daemon is up (the shared assets exist then)."""
    shared = Layout(state_dir=STATE, runtime_dir=base / "unused")
    layout = Layout(state_dir=base / "state", runtime_dir=base / "run")
    link_cache(shared.cache_dir, layout.cache_dir)
    shared_conn, conn = open_database(shared.database), open_database(layout.database)
    try:
        for image in ImageRepo(shared_conn, shared.state_dir).find():  # absolute paths, into the shared dir
            ImageRepo(conn).insert(image)
        settings = SettingsService(SettingsRepo(conn))
        settings.set("vmm", vmm)
        settings.set("default_image", AGENT_IMAGE)
    finally:
        shared_conn.close()
        conn.close()
    return layout.state_dir


PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture
def restart_base(e2e_daemon: Daemon) -> Iterator[Path]:
    """A short base dir (Unix socket paths) for a test's own nexusd, which the test kills and restarts while its VMs
    run on: a state dir linked to the session's assets, and this process made the subreaper of the VMMs a killed
    nexusd leaves behind (so ``reap`` can collect them)."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.fail(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")
    path = Path(tempfile.mkdtemp(prefix="nxrs-"))
    (path / "nexusd.toml").write_text("boot_timeout_s = 60\nheartbeat_timeout_s = 4\nstop_timeout_s = 10\n")
    linked_state(path, vmm="qemu")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def restartable_daemon(base: Path) -> Daemon:
    """A nexusd on ``restart_base`` that leaves its VMs running when it stops."""
    return start_daemon(base, "--config", str(base / "nexusd.toml"), state_dir=base / "state", stop_vms_on_exit=False)


def reap(pid: int, timeout_s: float = 15) -> int:
    """Reap ``pid`` (our child once nexusd died: we are its subreaper); its exit code, as subprocess gives it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} did not exit within {timeout_s}s")
