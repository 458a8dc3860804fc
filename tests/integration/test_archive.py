"""Tree copy as streamed tar through a real nexusd: ``nexusctl vm cp -r`` both ways, ``/v1/vms/{ref}/archive`` and
the agent's archive tools, with the fake Firecracker's VM (a real agent as a host process, so its "guest" paths are
host paths, all under this test's temporary directories).

Covers the round trip of a tree of 2,000 files, symbolic and hard links, odd modes and a 200 MiB file
(byte-identical, modes and mtimes kept) with nexusd's peak memory checked; tars that try to escape (``..``, an
absolute name, a path through a symbolic link, a hard link out, a device node, a FIFO) refused on every edge with
nothing written outside the destination; and a client that goes away mid-stream leaving no session behind.
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

from nexus.cli.main import main
from tests.api_client import NexusClient
from tests.fakes.firecracker_host import _busybox, processes_mentioning, running_daemon
from tests.helpers import Daemon, tree_listing, wait_until

pytestmark = [pytest.mark.skipif(_busybox() is not None, reason=str(_busybox()))]

VM = "arc"
BIG_BYTES = 200 * 1024 * 1024
TREE_FILES = 2000
MEMORY_SLACK_KIB = 64 * 1024  # nexusd's peak RSS may grow this much during a 200 MiB round trip (a few chunks)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with running_daemon("nxarc-") as d:
        with NexusClient(d.socket, timeout_s=60) as api:
            api.create_vm(name=VM, mem_mib=256)
            api.start_vm(VM)
        yield d


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd") as client:
        yield client


def _cli(daemon: Daemon, *args: str) -> int:
    return main(["--socket", str(daemon.socket), *args])


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _maketree_listing(root: Path) -> None:
    """2,000 small files in 40 directories, odd modes, links, an empty directory and a 200 MiB file."""
    root.mkdir()
    for d in range(40):
        sub = root / f"dir{d:02}" / "inner"
        sub.mkdir(parents=True)
        for f in range(TREE_FILES // 40):
            path = sub / f"file{f:03}.txt"
            path.write_bytes(f"{d}/{f}\n".encode() * (f % 7))
            path.chmod((0o600, 0o644, 0o640, 0o755, 0o700, 0o444, 0o4755)[f % 7])
    (root / "empty").mkdir(mode=0o750)
    (root / "readonly").mkdir()
    (root / "readonly" / "kept").write_text("inside a read-only directory\n")
    (root / "readonly").chmod(0o555)
    (root / "link-to-file").symlink_to("dir00/inner/file001.txt")
    (root / "dangling").symlink_to("/nonexistent/elsewhere")
    os.link(root / "dir01" / "inner" / "file002.txt", root / "hardlink")
    block = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    with (root / "big.bin").open("wb") as big:
        for i in range(BIG_BYTES // len(block)):
            big.write(i.to_bytes(8, "big") + block[8:])  # each MiB its own: a chunk out of place shows
    os.utime(root / "big.bin", (1_600_000_000, 1_600_000_000))


def test_tree_round_trip_with_the_cli(daemon: Daemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, guest, back = tmp_path / "src", tmp_path / "guest", tmp_path / "back"
    _maketree_listing(src)
    guest.mkdir()
    hwm_before = _vm_hwm_kib(daemon.proc.pid)

    started = time.monotonic()
    assert _cli(daemon, "vm", "cp", "-r", str(src), f"{VM}:{guest}/copy") == 0
    up_s = time.monotonic() - started
    assert "copied 2002 files" in capsys.readouterr().err  # 2,000, readonly/kept and big.bin (+ a hard link)
    started = time.monotonic()
    assert _cli(daemon, "vm", "cp", "-r", f"{VM}:{guest}/copy", str(back)) == 0
    down_s = time.monotonic() - started

    expected = tree_listing(src)
    assert tree_listing(guest / "copy") == expected  # the agent runs as root: setuid kept there
    returned = tree_listing(back)
    setuid = {k for k, v in expected.items() if v[0] == "file" and v[1] & 0o4000}
    assert setuid, "the tree has setuid files"
    for key in setuid:  # a guest cannot plant setuid files on the host: the bits are dropped, nothing else
        kind, mode, *rest = expected[key]
        expected[key] = (kind, mode & ~0o6000, *rest)
    assert returned == expected
    assert len(expected) > TREE_FILES
    # An existing directory receives the copy under the source's name (cp -r).
    assert _cli(daemon, "vm", "cp", "-r", f"{VM}:{guest}/copy/dir00", str(back / "empty")) == 0
    assert len(list((back / "empty" / "dir00" / "inner").iterdir())) == TREE_FILES // 40

    grown = _vm_hwm_kib(daemon.proc.pid) - hwm_before
    print(f"200 MiB tree: up {up_s:.1f}s, down {down_s:.1f}s; nexusd peak RSS grew {grown} KiB")
    assert grown < MEMORY_SLACK_KIB, f"nexusd's peak memory grew {grown} KiB during the copies"


def test_rest_stream_is_a_tar_of_the_path(daemon: Daemon, http: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "one" / "sub").mkdir(parents=True)
    (tmp_path / "one" / "sub" / "f").write_text("hello\n")
    response = http.get(f"/v1/vms/{VM}/archive", params={"path": str(tmp_path / "one")})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        assert tar.getnames() == ["one", "one/sub", "one/sub/f"]
    missing = http.get(f"/v1/vms/{VM}/archive", params={"path": str(tmp_path / "nope")})
    assert missing.status_code == 422
    assert "nope" in missing.json()["error"]["message"]
    relative = http.get(f"/v1/vms/{VM}/archive", params={"path": "relative/path"})
    assert relative.status_code == 422
    # Without -r, a directory is refused with a hint, both ways.
    assert _cli(daemon, "vm", "cp", f"{VM}:{tmp_path / 'one'}", str(tmp_path / "x")) == 2
    assert _cli(daemon, "vm", "cp", str(tmp_path / "one"), f"{VM}:{tmp_path}/y") == 2


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname, info.mode = kind, size, link, 0o644
    return info


def _escapes(outside: Path) -> dict[str, tuple[bytes, str]]:
    """Tars that try to write outside their destination, and the member each refusal must name."""
    ok = (_info("fine.txt", size=3), b"ok\n")
    return {
        "dotdot": (_tar(ok, (_info("../escaped.txt", size=4), b"bad\n")), "../escaped.txt"),
        "absolute": (_tar(ok, (_info(f"{outside}/abs.txt", size=4), b"bad\n")), f"{outside}/abs.txt"),
        "through-symlink": (
            _tar(ok, (_info("door", tarfile.SYMTYPE, link=str(outside)), b""), (_info("door/x", size=4), b"bad\n")),
            "door/x",
        ),
        "hardlink-out": (_tar(ok, (_info("hl", tarfile.LNKTYPE, link="../victim"), b"")), "hl"),
        "device": (_tar(ok, (_info("dev", tarfile.CHRTYPE), b"")), "dev"),
        "fifo": (_tar(ok, (_info("pipe", tarfile.FIFOTYPE), b"")), "pipe"),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "through-symlink", "hardlink-out", "device", "fifo"])
def test_escaping_tars_are_refused_everywhere(
    daemon: Daemon,
    http: httpx.Client,
    tmp_path: Path,
    case: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "victim").write_text("victim\n")
    data, member = _escapes(outside)[case]
    before = sorted(p.name for p in tmp_path.iterdir())

    # REST: 422 naming the member.
    dest = tmp_path / "rest"
    response = http.put(f"/v1/vms/{VM}/archive", params={"path": str(dest)}, content=data)
    assert response.status_code == 422, response.text
    assert repr(member) in response.json()["error"]["message"]
    assert (dest / "fine.txt").read_text() == "ok\n"  # what came before the refusal

    # The agent's tool: an isError result naming the member.
    (tmp_path / "evil.tar").write_bytes(data)
    with NexusClient(daemon.socket) as api:
        result = api.call_tool(
            VM, "archive_extract", {"archive": str(tmp_path / "evil.tar"), "destination": str(tmp_path / "tool")}
        )
    assert result["isError"] is True
    assert repr(member) in result["content"][0]["text"]

    # The CLI: a tar on stdin, exit 2 with one line naming the member.
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    capsys.readouterr()
    code = _cli(daemon, "vm", "cp", "-r", "-", f"{VM}:{tmp_path / 'cli'}")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("nexusctl: ") and repr(member) in err, err

    assert list(outside.iterdir()) == []
    assert (tmp_path / "victim").read_text() == "victim\n"
    assert os.stat(tmp_path / "victim").st_nlink == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "rest", "tool", "cli", "evil.tar"])


def _agent_pid(daemon: Daemon) -> int:
    pids = [pid for pid in processes_mentioning(str(daemon.runtime_dir)) if b"nexus.agent" in _cmdline(pid)]
    assert len(pids) == 1, pids
    return pids[0]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _open_files(pid: int, under: Path) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(under)):
            found.append(target)
    return found


def _archive_threads(pid: int) -> int:
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith("archive-"):
                count += 1
        except OSError:
            continue
    return count


def test_a_client_gone_mid_stream_leaves_no_session(daemon: Daemon, tmp_path: Path) -> None:
    agent = _agent_pid(daemon)
    big = tmp_path / "tree" / "big.bin"
    big.parent.mkdir()
    with big.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    transport = httpx.HTTPTransport(uds=str(daemon.socket))
    with (
        httpx.Client(transport=transport, base_url="http://nexusd") as client,
        client.stream("GET", f"/v1/vms/{VM}/archive", params={"path": str(big.parent)}) as response,
    ):
        assert response.status_code == 200
        next(response.iter_bytes())
        assert _open_files(agent, tmp_path), "the agent is packing the file"
    # The client is gone: nexusd closes the session, the agent's thread ends and the file is closed.
    wait_until(lambda: not _open_files(agent, tmp_path) and _archive_threads(agent) == 0, 15, "the session to end")

    def body() -> Iterator[bytes]:
        yield _tar((_info("a", size=5), b"hello"))[:1024]
        raise ConnectionAbortedError("the client gives up")

    with (
        httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd") as client,
        pytest.raises(ConnectionAbortedError),
    ):
        client.put(f"/v1/vms/{VM}/archive", params={"path": str(tmp_path / "up")}, content=body())
    wait_until(lambda: _archive_threads(agent) == 0, 15, "the upload session to end")


def test_a_tar_on_stdout(daemon: Daemon, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_bytes(b"\x00\xffbinary")
    assert _cli(daemon, "vm", "cp", "-r", f"{VM}:{tmp_path / 't'}", "-") == 0
    out = capsysbinary.readouterr().out
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert tar.getnames() == ["t", "t/f"]
        data = tar.extractfile("t/f")
        assert data is not None and data.read() == b"\x00\xffbinary"
