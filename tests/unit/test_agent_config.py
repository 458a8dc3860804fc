"""Agent options (kernel command line + flags), virtio-serial port discovery and the fd stream."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from nexus.agent.config import DEFAULT_HEARTBEAT_S, load_config, parse_kernel_cmdline
from nexus.agent.transport import FdStream, PathEndpoint, PeerGone, VirtioPortEndpoint, find_virtio_port


def test_parse_kernel_cmdline() -> None:
    text = 'console=ttyS0 root=/dev/vda nexus.heartbeat_s=0.5 quiet nexus.log_level=debug x="a b" nexus.q="1 2"\n'
    assert parse_kernel_cmdline(text) == {"nexus.heartbeat_s": "0.5", "nexus.log_level": "debug", "nexus.q": "1 2"}
    assert parse_kernel_cmdline('nexus.heartbeat_s=3 broken="quote') == {"nexus.heartbeat_s": "3"}


def test_config_precedence(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    missing = load_config(["--cmdline", str(tmp_path / "none")])
    assert missing.heartbeat_s == DEFAULT_HEARTBEAT_S and missing.control is None and missing.mcp is None
    assert missing.warnings  # unreadable cmdline is reported, not fatal
    cmdline.write_text("nexus.heartbeat_s=0.5 nexus.log_level=DEBUG\n")
    kernel = load_config(["--cmdline", str(cmdline)])
    assert (kernel.heartbeat_s, kernel.log_level, kernel.warnings) == (0.5, "debug", ())
    flags = load_config(["--cmdline", str(cmdline), "--heartbeat-s", "0.2", "--control", "/c", "--mcp", "stdio"])
    assert (flags.heartbeat_s, flags.control, flags.mcp) == (0.2, "/c", "stdio")
    cmdline.write_text("nexus.heartbeat_s=-1 nexus.log_level=loud\n")
    bad = load_config(["--cmdline", str(cmdline)])
    assert bad.heartbeat_s == DEFAULT_HEARTBEAT_S and bad.log_level == "info" and len(bad.warnings) == 2
    with pytest.raises(SystemExit):
        load_config(["--heartbeat-s", "0"])


def test_gateway_options(tmp_path: Path) -> None:
    base = ["--cmdline", str(tmp_path / "none")]
    default = load_config(base)
    assert (default.gateway, default.gateway_socket) == (None, "/run/nexus/gateway.sock")
    assert default.gateway_http == ("127.0.0.1", 7780)
    given = load_config([*base, "--gateway", "/g", "--gateway-socket", "/s", "--gateway-http", "[::1]:0"])
    assert (given.gateway, given.gateway_socket, given.gateway_http) == ("/g", "/s", ("::1", 0))
    assert load_config([*base, "--gateway-http", "none"]).gateway_http is None
    for bad in (["--gateway", "stdio"], ["--gateway-http", "7780"], ["--gateway-http", "localhost:http"]):
        with pytest.raises(SystemExit):
            load_config([*base, *bad])


def test_find_virtio_port(tmp_path: Path) -> None:
    sys_root = tmp_path / "virtio-ports"
    for port, name in (("vport0p0", ""), ("vport1p1", "org.nexus.control"), ("vport1p2", "org.nexus.mcp")):
        (sys_root / port).mkdir(parents=True)
        (sys_root / port / "name").write_text(name + "\n")
    assert find_virtio_port("org.nexus.mcp", str(sys_root), "/dev") == "/dev/vport1p2"
    assert find_virtio_port("org.nexus.control", str(sys_root), "/dev") == "/dev/vport1p1"
    assert find_virtio_port("org.other", str(sys_root), "/dev") is None
    assert find_virtio_port("org.nexus.mcp", str(tmp_path / "absent"), "/dev") is None


def test_endpoints_give_up_when_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert VirtioPortEndpoint("org.nexus.none", str(tmp_path), str(tmp_path)).connect(stop) is None
    stop.clear()
    threading.Timer(0.3, stop.set).start()
    assert PathEndpoint(str(tmp_path / "not-yet.sock")).connect(stop) is None


def test_fd_stream_reads_writes_and_sees_the_peer_leave() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = FdStream(ours.fileno(), ours.fileno(), on_close=ours.close)
    assert stream.read(0.05) is None
    theirs.sendall(b"hello\n")
    assert stream.read(1.0) == b"hello\n"
    stream.write(b"back\n")
    assert theirs.recv(100) == b"back\n"
    theirs.close()
    assert stream.read(1.0) == b""
    with pytest.raises(PeerGone):
        stream.write(b"more\n")
    stream.close()
    assert ours.fileno() == -1


def test_fd_stream_writes_more_than_the_socket_buffer() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = FdStream(ours.fileno(), ours.fileno(), on_close=ours.close)
    data = bytes(range(256)) * 16384  # 4 MiB: the non-blocking writer has to wait for the reader
    received = bytearray()

    def drain() -> None:
        while len(received) < len(data):
            chunk = theirs.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stream.write(data)
    reader.join(10)
    assert bytes(received) == data
    stream.close()
    theirs.close()


def test_the_agent_completes_a_short_path() -> None:
    from nexus.agent.main import full_path

    assert full_path("/sbin:/bin") == "/sbin:/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
    assert full_path("") == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert full_path("/opt/x:/usr/bin") == "/opt/x:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"
