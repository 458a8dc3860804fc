"""``nexusctl vm cp -r`` with a real QEMU VM: a tree of 2,000 files, links, odd modes and a big file copied in and
back out, byte-identical with modes and mtimes; a tar that climbs out with ``..`` refused by the guest with
nothing written outside its destination. One boot. The throughput each way is printed (``-s``).

The big file is smaller than the integration test's 200 MiB (``tests/integration/test_archive.py``, the fake
Firecracker's host-process agent): under TCG the guest's Python moves a few MiB/s, so 200 MiB would take minutes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api_client import NexusClient
from tests.e2e.conftest import nexusctl
from tests.helpers import Daemon, tree_listing

pytestmark = pytest.mark.vm

VM = "e2e-archive"
BIG_BYTES = int(os.environ.get("NEXUS_E2E_ARCHIVE_MIB", "32")) * 1024 * 1024
TREE_FILES = 2000


@pytest.fixture
def vm(api: NexusClient) -> Iterator[str]:
    api.create_vm(name=VM)
    try:
        api.start_vm(VM)
        yield VM
    finally:
        api.remove_vm(VM, force=True)


def _maketree_listing(root: Path) -> None:
    for d in range(20):
        sub = root / f"d{d:02}"
        sub.mkdir(parents=True)
        for f in range(TREE_FILES // 20):
            path = sub / f"f{f:03}"
            path.write_bytes(f"{d}/{f}\n".encode() * (f % 5))
            path.chmod((0o644, 0o600, 0o755, 0o440, 0o750)[f % 5])
    (root / "link").symlink_to("d00/f001")
    os.link(root / "d01" / "f002", root / "hard")
    (root / "ro").mkdir(mode=0o555)
    block = hashlib.sha256(b"e2e").digest() * (1 << 15)
    with (root / "big.bin").open("wb") as big:
        for i in range(BIG_BYTES // len(block)):
            big.write(i.to_bytes(8, "big") + block[8:])


def _run(api: NexusClient, command: str) -> str:
    result = api.call_tool(VM, "run_command", {"command": command})
    assert result["structuredContent"]["exit_code"] == 0, result
    out: str = result["structuredContent"]["stdout"]
    return out


def test_tree_copy_with_a_real_vm(e2e_daemon: Daemon, api: NexusClient, vm: str, tmp_path: Path) -> None:
    src, back = tmp_path / "src", tmp_path / "back"
    _maketree_listing(src)
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink())

    started = time.monotonic()
    nexusctl(e2e_daemon, "vm", "cp", "-r", str(src), f"{vm}:/root/tree")
    up_s = time.monotonic() - started
    listing = _run(api, "find /root/tree -type f | wc -l; stat -c %a /root/tree/d00/f004 /root/tree/ro")
    assert listing.split() == [str(TREE_FILES + 2), "750", "555"]  # the files, big.bin and the hard link
    assert (
        _run(api, "sha256sum /root/tree/big.bin").split()[0]
        == hashlib.sha256((src / "big.bin").read_bytes()).hexdigest()
    )

    started = time.monotonic()
    nexusctl(e2e_daemon, "vm", "cp", "-r", f"{vm}:/root/tree", str(back))
    down_s = time.monotonic() - started
    assert tree_listing(back) == tree_listing(src)
    mib = total / (1024 * 1024)
    print(f"\n{mib:.0f} MiB in {TREE_FILES + 2} files: in {up_s:.1f}s ({mib / up_s:.1f} MiB/s), "
          f"out {down_s:.1f}s ({mib / down_s:.1f} MiB/s)")  # fmt: skip

    # A tar that climbs out: refused by the guest, naming the member; nothing lands outside the destination.
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        for name, data in (("ok", b"ok\n"), ("../escaped", b"bad\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(e2e_daemon.socket)), timeout=60) as http:
        response = http.put(
            f"http://nexusd/v1/vms/{vm}/archive", params={"path": "/root/dest"}, content=evil.getvalue()
        )
    assert response.status_code == 422
    assert "'../escaped' refused" in response.json()["error"]["message"]
    assert _run(api, "cat /root/dest/ok; test ! -e /root/escaped && echo clean") == "ok\nclean\n"
