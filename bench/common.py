"""What benchmarks share: a real nexusd in a temp dir, an image with this checkout's agent, percentiles, and table
printing."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from nexus.domain import Image
from nexus.store import ImageRepo, open_database


@dataclass(frozen=True, slots=True)
class RunningDaemon:
    pid: int
    socket: Path
    state_dir: Path
    log: Path

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def nexusd(*extra: str, state_dir: Path | None = None) -> Iterator[RunningDaemon]:
    """A real nexusd (private state unless ``state_dir``), stopped by PID on exit."""
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        base = Path(tmp)
        state = state_dir or base / "state"
        sock = base / "nexusd.sock"
        log = (base / "nexusd.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nexus.daemon.main",
                "--state-dir",
                str(state),
                "--runtime-dir",
                str(base / "run"),
                "--socket",
                str(sock),
                "--log-level",
                "info",
                "--no-network",  # benchmarks run in the host's namespace: no bridge or rules there
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
                        c.get("http://nexusd/v1/health").raise_for_status()
                    break
                except (httpx.HTTPError, OSError):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"nexusd did not come up: {(base / 'nexusd.log').read_text()}") from None
                    time.sleep(0.05)
            yield RunningDaemon(proc.pid, sock, state, base / "nexusd.log")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def percentile(samples: Sequence[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in columns], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    sys.stdout.flush()


def cpu_count() -> int:
    return os.cpu_count() or 1


@contextlib.contextmanager
def loop_btrfs(base: Path, size: str) -> Iterator[Path]:
    """A fresh btrfs on a loop device (backing file in ``base``), mounted at ``base/mnt``; unmounted and detached
    however the block ends. Needs root and mkfs.btrfs (the tests use it too, through ``tests.helpers``)."""
    backing, mnt = base / "btrfs.img", base / "mnt"
    subprocess.run(["truncate", "-s", size, str(backing)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(backing)], check=True, capture_output=True)
    loop = subprocess.run(["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True)
    device = loop.stdout.strip()
    try:
        mnt.mkdir()
        subprocess.run(["mount", device, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def link_cache(shared_cache: Path, cache: Path) -> None:
    """Give a state dir of its own the kernels of ``shared_cache`` (linked; each initramfs copied, since nexusd
    may rebuild it) and the KVM probe's verdict (so it is not paid again). For a nexusd beside another one."""
    for kdir in (shared_cache / "kernels").iterdir():
        if kdir.name.startswith("."):
            continue
        mine = cache / "kernels" / kdir.name
        mine.mkdir(parents=True)
        for item in kdir.iterdir():
            if item.name.startswith("initramfs-nexus"):
                shutil.copy2(item, mine / item.name)
            else:
                (mine / item.name).symlink_to(item)
    if (shared_cache / "accel.json").exists():
        shutil.copy2(shared_cache / "accel.json", cache / "accel.json")


def uds_client(socket: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(socket)), base_url="http://nexusd", timeout=600)


def agent_image(shared_state: Path, name: str) -> dict[str, Any]:
    """Kernel pulled and image ``name`` (re)built with this checkout's agent, in the shared bench state."""
    with nexusd(state_dir=shared_state) as daemon, uds_client(daemon.socket) as api:
        with api.stream("POST", "/v1/kernels/pull", json={"version": None}) as r:
            r.read()
        if api.get(f"/v1/images/{name}").status_code == 200:
            api.delete(f"/v1/images/{name}").raise_for_status()
        with api.stream("POST", "/v1/images", json={"base": "debian-bookworm", "name": name}) as r:
            r.read()
        image: dict[str, Any] = api.get(f"/v1/images/{name}").raise_for_status().json()
        return image


def seed_state(state: Path, shared_state: Path, image: dict[str, Any]) -> None:
    """A new state dir with the shared kernel cache and ``image`` as its default image (a copy and a row)."""
    (state / "cache").mkdir(parents=True)
    shutil.copytree(shared_state / "cache" / "kernels", state / "cache" / "kernels", symlinks=True)
    if (shared_state / "cache" / "accel.json").exists():
        shutil.copy2(shared_state / "cache" / "accel.json", state / "cache" / "accel.json")
    (state / "images").mkdir()
    target = state / "images" / "debian-bookworm.ext4"
    subprocess.run(["cp", "--sparse=always", image["path"], str(target)], check=True)
    conn = open_database(state / "nexus.db")
    try:
        fields = {k: image[k] for k in ("id", "base", "size_mib", "sha256", "init_system", "agent_version")}
        built = datetime.fromisoformat(image["built_at"])
        ImageRepo(conn).insert(Image(name="debian-bookworm", path=target, built_at=built, **fields))
    finally:
        conn.close()
