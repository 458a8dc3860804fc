"""P4: snapshots and clones of running VMs on btrfs, a VM with a 4 GiB data drive against one with a 64 MiB drive,
in the same run, interleaved.

A btrfs filesystem is made on a loop device for the run (and removed); nexusd keeps its state there. Both VMs run
(QEMU, TCG here) with their data drive filled with random bytes from the host (4 GiB vs 64 MiB of real extents).
Timed: ``POST /v1/vms/{ref}/snapshots`` (the whole call: guest sync + freeze, the subvolume snapshots, thaw) and
``POST /v1/vms/{ref}/clone`` (live, frozen likewise); the same snapshot call once the VMs are stopped (no freeze);
and the storage step alone (``clone_volume`` of the data drive's volume: one ioctl).
For contrast, the copy backend's storage step on the host's ordinary filesystem, once per size.

Needs root (loop device, mount). The kernel and the base rootfs come from $NEXUS_BENCH_STATE (default
/var/tmp/nexus-bench, shared with the vm benchmark); an image with this checkout's agent is built from the cached
base (about a minute) so that the guest can freeze its filesystems.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench.common import agent_image, loop_btrfs, nexusd, percentile, print_table, seed_state, uds_client
from nexus.workspaces import BtrfsBackend, CopyBackend

STATE = Path(os.environ.get("NEXUS_BENCH_STATE", "/var/tmp/nexus-bench"))
IMAGE = "bench-ws-agent"
SNAPSHOTS = 10
CLONES = 3
SIZES_MIB = {"64 MiB": 64, "4 GiB": 4096}
CHUNK = 64 << 20


def _fill(path: Path, size_mib: int) -> None:
    """Random bytes over the whole drive (the guest does not mount it): real extents, not a sparse file."""
    block = os.urandom(CHUNK)
    with path.open("r+b") as fh:
        for offset in range(0, size_mib << 20, CHUNK):
            fh.seek(offset)
            fh.write(block[: min(CHUNK, (size_mib << 20) - offset)])
        os.fsync(fh.fileno())


def _post_ok(api: httpx.Client, path: str, body: dict[str, Any]) -> None:
    api.post(path, json=body).raise_for_status()


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _row(what: str, small: list[float], big: list[float]) -> list[object]:
    ms, mb = statistics.median(small), statistics.median(big)
    return [
        what,
        f"{ms:.1f}",
        f"{percentile(small, 90):.1f}",
        f"{mb:.1f}",
        f"{percentile(big, 90):.1f}",
        f"{mb / ms:.2f}",
    ]


def _copy_contrast(work: Path) -> list[object]:
    """The copy backend's storage step, once per size, on the host's own filesystem."""
    backend = CopyBackend("bench")
    times = {}
    for label, size_mib in SIZES_MIB.items():
        source, dest = work / f"src-{size_mib}", work / f"dst-{size_mib}"
        backend.create_volume(source)
        with (source / "disk.img").open("wb") as fh:
            fh.truncate(size_mib << 20)
        _fill(source / "disk.img", size_mib)
        times[label] = _timed(partial(backend.clone_volume, source, dest, readonly=True))
        backend.delete_volume(dest)
        backend.delete_volume(source)
    small, big = times["64 MiB"], times["4 GiB"]
    return ["storage step, copy backend (1 run)", f"{small:.1f}", "", f"{big:.1f}", "", f"{big / small:.2f}"]


def run() -> None:
    image = agent_image(STATE, IMAGE)
    base = Path(tempfile.mkdtemp(prefix="nexus-bench-ws-", dir="/var/tmp"))
    try:
        with loop_btrfs(base, "12G") as mnt:
            state = mnt / "state"
            seed_state(state, STATE, image)
            with nexusd(state_dir=state) as daemon, uds_client(daemon.socket) as api:
                storage = api.get("/v1/health").json()["storage"]
                if storage["name"] != "btrfs":
                    raise RuntimeError(f"expected the btrfs backend, got {storage}")
                vms = {}
                for label, size_mib in SIZES_MIB.items():
                    name = f"ws-{size_mib}"
                    drive = api.post("/v1/drives", json={"name": f"d-{size_mib}", "size_mib": size_mib})
                    drive_id = drive.raise_for_status().json()["id"]
                    _fill(state / "drives" / drive_id / "disk.img", size_mib)
                    api.post("/v1/vms", json={"name": name, "mem_mib": 256}).raise_for_status()
                    api.post(f"/v1/drives/d-{size_mib}/attach", json={"vm": name}).raise_for_status()
                    api.post(f"/v1/vms/{name}/start").raise_for_status()
                    vms[label] = (name, drive_id)

                snap: dict[str, list[float]] = {label: [] for label in SIZES_MIB}
                step: dict[str, list[float]] = {label: [] for label in SIZES_MIB}
                clone: dict[str, list[float]] = {label: [] for label in SIZES_MIB}
                backend = BtrfsBackend("bench")
                for i in range(SNAPSHOTS):  # interleaved, so load on the shared host hits both alike
                    for label, (name, drive_id) in vms.items():
                        snap[label].append(
                            _timed(partial(_post_ok, api, f"/v1/vms/{name}/snapshots", {"name": f"s{i}"}))
                        )
                        volume, dest = state / "drives" / drive_id, mnt / f"step-{drive_id}-{i}"
                        step[label].append(_timed(partial(backend.clone_volume, volume, dest, readonly=True)))
                        backend.delete_volume(dest)
                for i in range(CLONES):
                    for label, (name, _) in vms.items():
                        copy = f"{name}-c{i}"
                        clone[label].append(_timed(partial(_post_ok, api, f"/v1/vms/{name}/clone", {"name": copy})))
                        api.delete(f"/v1/vms/{copy}").raise_for_status()
                        api.delete(f"/v1/drives/{copy}-d-{SIZES_MIB[label]}").raise_for_status()
                stopped: dict[str, list[float]] = {label: [] for label in SIZES_MIB}
                for name, _ in vms.values():
                    api.post(f"/v1/vms/{name}/stop").raise_for_status()
                for i in range(SNAPSHOTS):  # no guest to freeze: the API call and the subvolume snapshots alone
                    for label, (name, _) in vms.items():
                        stopped[label].append(
                            _timed(partial(_post_ok, api, f"/v1/vms/{name}/snapshots", {"name": f"t{i}"}))
                        )
                rows = [
                    _row(f"snapshot, running VM ({SNAPSHOTS}x, API call)", snap["64 MiB"], snap["4 GiB"]),
                    _row(f"snapshot, stopped VM ({SNAPSHOTS}x, API call)", stopped["64 MiB"], stopped["4 GiB"]),
                    _row(f"clone, running VM ({CLONES}x, API call)", clone["64 MiB"], clone["4 GiB"]),
                    _row(f"storage step alone, btrfs ({SNAPSHOTS}x)", step["64 MiB"], step["4 GiB"]),
                ]
        with tempfile.TemporaryDirectory(prefix="nexus-bench-copy-", dir="/var/tmp") as work:
            rows.append(_copy_contrast(Path(work)))
        print_table(
            f"P4 workspaces on btrfs (loop device), ms; storage: {storage['reason']}",
            ["operation", "64M med", "64M p90", "4G med", "4G p90", "ratio 4G/64M"],
            rows,
        )
        print("goal: ratio <= 1.2 and snapshot under 20 ms on btrfs")
    finally:
        shutil.rmtree(base, ignore_errors=True)
