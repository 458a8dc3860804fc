"""Least privilege over TCP, through a real nexusd on loopback: agent tokens open only their VM's MCP endpoint,
expired and removed tokens are refused, host paths are refused over TCP, the bearer scheme is case-insensitive,
a token file others can read stops nexusd, TLS with --ca-file, the REST body cap on paths merely ending in /mcp,
and TCP_NODELAY on accepted connections.

The VMs here are created, never started: an agent token that gets the MCP-level "not running" error from its VM's
endpoint has passed authentication (the request reached the endpoint). Running VMs behind agent tokens are in
``test_remote_tcp``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from nexus.daemon.server import bind_tcp
from nexus.domain import Forbidden
from nexus.mcp.errors import INVALID_STATE
from tests.api_client import NexusClient
from tests.helpers import Daemon, free_port, start_daemon, wait_until

ADMIN = "admin-token-for-the-tcp-listener-0123456789"


@dataclass
class Remote:
    daemon: Daemon
    url: str
    base: Path
    token_file: Path

    def local(self) -> NexusClient:
        return NexusClient(self.daemon.socket, timeout_s=60)

    def http(self, token: str | None = None, scheme: str = "Bearer") -> httpx.Client:
        headers = {"authorization": f"{scheme} {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _token_file(base: Path) -> Path:
    token_file = base / "admin-token"
    token_file.write_text(ADMIN + "\n")
    token_file.chmod(0o600)
    return token_file


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    """One nexusd with a TCP listener and two created VMs, ``box`` and ``other``."""
    base = Path(tempfile.mkdtemp(prefix="nxacc-"))
    port = free_port()
    token_file = _token_file(base)
    d = start_daemon(base, "--listen", f"127.0.0.1:{port}", "--token-file", str(token_file))
    try:
        r = Remote(d, f"http://127.0.0.1:{port}", base, token_file)
        with r.local() as api:
            api.create_vm(name="box", mem_mib=256)
            api.create_vm(name="other", mem_mib=256)
        yield r
    finally:
        code = d.stop()
        log = d.log_text()
        shutil.rmtree(base, ignore_errors=True)
        assert code == 0, log[-3000:]


def _nexusctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexus.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


async def _list_tools_error(url: str, token: str, verify: Any = True) -> MCPError:
    """Open an MCP session at ``url`` with ``token``; list the tools; the MCPError it raises (the VM is stopped)."""
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30, verify=verify)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        with pytest.raises(MCPError) as caught:
            await client.list_tools()
    return caught.value


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_agent_token_opens_only_its_vms_mcp_endpoint(remote: Remote) -> None:
    done = _nexusctl("--socket", str(remote.daemon.socket), "--json", "token", "create", "--vm", "box")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    agent = made["token"]
    assert agent.startswith("nxa_") and made["vm_name"] == "box" and made["expires_at"] is None
    with remote.local() as api:
        box_id = api.get_vm("box")["id"]

    # Its VM's endpoint, by name, id or id prefix: the request reaches the endpoint (a stopped VM's MCP error).
    for ref in ("box", box_id, box_id[:8]):
        error = anyio.run(_list_tools_error, f"{remote.url}/v1/vms/{ref}/mcp", agent)
        assert error.code == INVALID_STATE and error.message.startswith("VM box is created: start it")

    # Everything else: 403 with the JSON error body, before anything is read or done.
    with remote.http(agent) as http:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        for response in (
            http.get("/v1/health"),
            http.get("/v1/vms"),
            http.get(f"/v1/vms/{box_id}"),
            http.post("/v1/vms/box/start"),
            http.post("/v1/vms/box/tools/run_command", json={"command": "id"}),
            http.post("/mcp", json=ping),
            http.get("/v1/tokens"),
            http.post("/v1/tokens", json={"vm": "other"}),
            http.post("/v1/vms/other/mcp", json=ping),
            http.post("/v1/vms/nope/mcp", json=ping),
            http.post("/v1/vms/box/mcp/", json=ping),
        ):
            _refused(response, 403, "forbidden")
            assert "opens only VM box's MCP endpoint" in response.json()["error"]["message"]
    with remote.local() as api:
        assert api.get_vm("box")["state"] == "created"
        assert [t["vm_name"] for t in api.list_tokens()] == ["box"]

    # The admin token still reaches everything, with any case of the scheme; the Unix socket needs none.
    with remote.http(ADMIN, scheme="bearer") as http:
        assert http.get("/v1/health").status_code == 200
        listed = http.get("/v1/tokens").json()
    assert [t["id"] for t in listed] == [made["id"]]
    assert set(listed[0]) == {"id", "vm_id", "vm_name", "created_at", "expires_at", "last_used"}
    assert listed[0]["last_used"] is not None
    with remote.http(agent, scheme="BEARER") as http:
        _refused(http.get("/v1/health"), 403, "forbidden")  # recognised (not 401) whatever the scheme's case
    error = anyio.run(_list_tools_error, f"{remote.url}/v1/vms/box/mcp", agent)
    assert error.code == INVALID_STATE
    shown = _nexusctl("--url", remote.url, "--token-file", str(remote.token_file), "--json", "token", "ls")
    assert shown.returncode == 0 and made["id"] in shown.stdout and agent.split("_")[-1] not in shown.stdout
    assert _nexusctl("--socket", str(remote.daemon.socket), "token", "rm", made["id"]).returncode == 0


def test_unknown_expired_and_removed_tokens_get_401(remote: Remote) -> None:
    with remote.local() as api:
        short = api.create_token("box", expires="1s")
        kept = api.create_token("box", expires="1h")
        removed = api.create_token("other")
        api.remove_token(removed["id"])
    assert datetime.datetime.fromisoformat(short["expires_at"]) > datetime.datetime.fromisoformat(short["created_at"])
    for token in (None, "", "nxa_" + "0" * 12 + "_" + "0" * 64, removed["token"], kept["token"][:-1] + "x"):
        with remote.http(token) as http:
            _refused(
                http.post("/v1/vms/box/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}), 401, "unauthorized"
            )
    with remote.http(ADMIN, scheme="Basic") as http:
        _refused(http.get("/v1/health"), 401, "unauthorized")
    bearer = {"authorization": f"Bearer {short['token']}"}
    wait_until(lambda: httpx.post(f"{remote.url}/v1/vms/box/mcp", headers=bearer).status_code == 401, 10, "expiry")
    error = anyio.run(_list_tools_error, f"{remote.url}/v1/vms/box/mcp", kept["token"])
    assert error.code == INVALID_STATE
    ls = _nexusctl("--socket", str(remote.daemon.socket), "token", "ls")
    assert ls.returncode == 0 and "(expired)" in ls.stdout
    with remote.local() as api:
        for t in api.list_tokens():
            api.remove_token(t["id"])


def test_a_removed_vms_tokens_are_gone(remote: Remote) -> None:
    with remote.local() as api:
        api.create_vm(name="doomed", mem_mib=256)
        doomed = api.create_token("doomed")
        assert anyio.run(_list_tools_error, f"{remote.url}/v1/vms/doomed/mcp", doomed["token"]).code == INVALID_STATE
        api.remove_vm("doomed")
        assert api.list_tokens() == []
    with remote.http(doomed["token"]) as http:
        _refused(http.post("/v1/vms/doomed/mcp", json={}), 401, "unauthorized")


def test_host_paths_are_refused_over_tcp(remote: Remote, tmp_path: Path) -> None:
    fake = tmp_path / "firecracker"
    fake.write_text("#!/bin/sh\necho 'Firecracker v1.15.0'\n")
    fake.chmod(0o755)
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"")
    with remote.http(ADMIN) as http:
        for path, body in (
            ("/v1/firecracker/pull", {"path": str(fake)}),
            ("/v1/images", {"name": "stolen", "base": "/etc/shadow"}),
            ("/v1/images", {"name": "local", "base": str(tarball), "sha256": "0" * 64}),
            ("/v1/images", {"name": "dotted", "base": "./debian-bookworm"}),
        ):
            response = http.post(path, json=body)
            _refused(response, 403, "forbidden")
            assert "only over the Unix socket" in response.json()["error"]["message"]
        # What needs no host file is allowed over TCP (and fails or works for its own reasons).
        _refused(http.post("/v1/firecracker/pull", json={"version": "9.9.9"}), 422, "invalid")
        by_url = http.post("/v1/images", json={"name": "web", "base": "https://example.invalid/r.tar"})
        assert by_url.status_code == 200 and b"needs its sha256" in by_url.content  # NDJSON: it ran
        assert http.get("/v1/firecracker").json() == []
        assert http.get("/v1/images").json() == []
    cli = _nexusctl(
        "--url", remote.url, "--token-file", str(remote.token_file), "firecracker", "pull", "--path", str(fake)
    )
    assert cli.returncode == 1 and "only over the Unix socket" in cli.stderr

    with NexusClient(url=remote.url, token=ADMIN) as admin, pytest.raises(Forbidden):
        list(admin.pull_firecracker(path=str(fake)))

    # The same over the Unix socket is allowed.
    with remote.local() as api:
        registered = [e for e in api.pull_firecracker(path=str(fake)) if e["event"] == "result"]
        assert registered[0]["result"]["version"] == "1.15.0"
        api.remove_firecracker("1.15.0")
        with remote.http(ADMIN) as http:
            assert http.get("/v1/firecracker").json() == []
        missing = api.send("POST", "/v1/images", json={"name": "local", "base": str(tmp_path / "missing.tar")})
        assert b"does not exist" in missing.content  # the build ran, and failed on the missing file


def test_token_file_open_to_others_stops_nexusd(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN)
    token_file.chmod(0o644)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nexus.daemon.main",
            "--state-dir",
            str(tmp_path / "state"),
            "--runtime-dir",
            str(tmp_path / "run"),
            "--socket",
            str(tmp_path / "nexusd.sock"),
            "--no-network",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--token-file",
            str(token_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        done.stderr
        == f"nexusd: token file {token_file} is open to group or others (mode 0644): chmod 600 {token_file}\n"
    )
    assert not (tmp_path / "nexusd.sock").exists()


def _raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode())
    return sock


def _status(sock: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_rest_body_cap_is_not_skipped_by_a_path_ending_in_mcp(remote: Remote) -> None:
    port = int(remote.url.rsplit(":", 1)[1])
    auth = f"Authorization: Bearer {ADMIN}\r\n"
    # 64 MiB announced, nothing sent: the answer comes from the header alone.
    sock = _raw_request(
        port,
        f"POST /v1/vms/box/tools/mcp HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {64 * 1024 * 1024}\r\n\r\n",
    )
    with sock:
        assert _status(sock) == 413
    # Chunked, no length: refused once past 1 MiB, long before 64 MiB are sent.
    sock = _raw_request(
        port,
        f"POST /v1/vms/box/tools/mcp HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
    )
    sent = 0
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    with sock:
        sock.setblocking(False)
        status = None
        deadline = time.monotonic() + 30
        while status is None and time.monotonic() < deadline and sent < 64 * 1024 * 1024:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
            try:
                peek = sock.recv(4096, socket.MSG_PEEK)
            except BlockingIOError:
                continue
            if peek:
                sock.setblocking(True)
                status = _status(sock)
        assert status == 413
        assert sent < 8 * 1024 * 1024
    # The real MCP routes keep their own (16 MiB) cap: 2 MiB is not refused by the REST cap.
    with remote.http(ADMIN) as http:
        big = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * (2 * 1024 * 1024)}}
        assert http.post("/v1/vms/box/mcp", json=big).status_code != 413


def test_accepted_tcp_connections_have_nodelay() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP; bind_tcp's listener gives its
    connections that. A listener made with proto 0 (the default) shows the difference."""

    async def nodelay_of(listener: socket.socket) -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            port = listener.getsockname()[1]
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                return await asyncio.wait_for(accepted, 10)
            finally:
                writer.close()

    assert asyncio.run(nodelay_of(bind_tcp("127.0.0.1", 0))) != 0
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.bind(("127.0.0.1", 0))
    plain.listen()
    assert asyncio.run(nodelay_of(plain)) == 0  # what bind_tcp did before: asyncio leaves Nagle on


# -- TLS


def _self_signed(base: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nexusd test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = base / "cert.pem", base / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def test_tls_listener_with_ca_file(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    token_file = _token_file(tmp_path)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    d = start_daemon(
        tmp_path,
        "--listen",
        f"127.0.0.1:{port}",
        "--token-file",
        str(token_file),
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    try:
        with NexusClient(d.socket) as api:  # the Unix socket stays plain HTTP
            api.create_vm(name="box", mem_mib=256)
            agent = api.create_token("box")["token"]
        with NexusClient(url=url, token=ADMIN, ca_file=cert) as c:
            assert c.health()["status"] == "ok"
        listed = _nexusctl(
            "--url", url, "--ca-file", str(cert), "--token-file", str(token_file), "--json", "vm", "list"
        )
        assert listed.returncode == 0, listed.stderr
        assert [v["name"] for v in json.loads(listed.stdout)] == ["box"]
        by_env = _nexusctl("--url", url, "--token-file", str(token_file), "status", env={"NEXUS_CA_FILE": str(cert)})
        assert by_env.returncode == 0, by_env.stderr

        untrusted = _nexusctl("--url", url, "--token-file", str(token_file), "vm", "list")
        assert untrusted.returncode == 3
        assert "TLS certificate this client does not trust" in untrusted.stderr and "--ca-file" in untrusted.stderr
        assert untrusted.stderr.count("\n") == 1
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/v1/health", headers={"authorization": f"Bearer {ADMIN}"}, timeout=5)
        wrong = _nexusctl("--ca-file", str(cert), "vm", "list")
        assert wrong.returncode == 2 and "https://" in wrong.stderr

        # An agent token over TLS: the MCP SDK client, and the stdio bridge with --token-file and --ca-file.
        ca = ssl.create_default_context(cafile=str(cert))
        assert anyio.run(_list_tools_error, f"{url}/v1/vms/box/mcp", agent, ca).code == INVALID_STATE
        agent_file = tmp_path / "agent-token"
        agent_file.write_text(agent)

        async def bridged() -> None:
            argv = [sys.executable, "-m", "nexus.cli.main", "--url", url, "--ca-file", str(cert)]
            argv += ["--token-file", str(agent_file), "mcp-bridge", "box"]
            server = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
            async with Client(server, read_timeout_seconds=30) as client:
                assert client.server_info is not None and client.server_info.name == "nexus-vm"
                with pytest.raises(MCPError) as caught:
                    await client.list_tools()
                assert caught.value.code == INVALID_STATE

        anyio.run(bridged)
    finally:
        code = d.stop()
        log = d.log_text()
        assert code == 0, log[-3000:]
    assert "and tls 127.0.0.1" in log
