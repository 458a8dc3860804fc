"""The egress proxy on loopback: a test CA's HTTPS (and a plain HTTP) upstream recording what reaches it, clients
through the proxy (httpx, raw sockets, python ssl), and the audit entries of every decision."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from nexus.domain.audit import ANONYMOUS_CALLER, AuditEntry, Decision, Via
from nexus.domain.egress import Binding, EgressMode, HostPattern, VmEgress, placeholder
from nexus.egress import EgressProxy, NexusCA, upstream_context
from nexus.egress.proxy import MAX_PER_CLIENT
from tests.tls import make_test_ca

pytestmark = pytest.mark.anyio

SECRET = "sk-live-0123456789abcdef"  # K's value: must reach api.test's x-api-key and nowhere else
TOKEN = "tok-live-fedcba9876543210"  # T's value, as a bearer token
NAMES = ("api.test", "other.test", "bearer.test")


# -- a test CA and upstreams that record what reaches them


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Upstream

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer(body)

    def _answer(self, body: bytes) -> None:
        self.server.seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
        if self.path == "/stream":  # a chunked answer of 1 MiB
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(16):
                self.wfile.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        payload = f"{self.command} {self.path} {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.seen: list[Seen] = []
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@dataclass
class ListAudit:
    entries: list[AuditEntry] = field(default_factory=list)

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    async def settled(self, count: int) -> None:
        """Wait for ``count`` entries: a tunnel is recorded when it ends, a moment after its client is gone."""
        for _ in range(500):
            if len(self.entries) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{len(self.entries)} audit entries, not {count}")

    def actions(self) -> list[tuple[str, Decision]]:
        return [(e.action, e.decision) for e in self.entries]


@dataclass
class Env:
    tls: _Upstream
    plain: _Upstream
    ca: NexusCA
    ca_file: Path  # the Nexus CA's certificate, as the guest trusts it
    test_ca: Path
    audit: ListAudit
    vm: VmEgress
    proxy: EgressProxy | None = None
    secrets: dict[str, str] = field(default_factory=lambda: {"K": SECRET, "T": TOKEN})

    @property
    def url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.port}"

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        """A client trusting the Nexus CA and the test CA (a guest's store would hold the Nexus CA and the
        public ones), sending everything through the proxy."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_verify_locations(self.test_ca)
        return httpx.AsyncClient(proxy=self.url, verify=context, trust_env=False, timeout=10, **kwargs)  # type: ignore[arg-type]

    async def start(self, **kwargs: object) -> EgressProxy:
        async def lookup(host: str, port: int) -> Sequence[str]:
            if host in (*NAMES, "down.test", "127.0.0.1"):
                return ["127.0.0.1"]
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        options: dict[str, object] = {"lookup": lookup, "blocked": ()}
        options.update(kwargs)
        self.proxy = EgressProxy(
            resolve=lambda ip: self.vm if ip == "127.0.0.1" else None,
            secret_value=self.secrets.get,
            ca=self.ca,
            upstream_ssl=upstream_context(self.test_ca),
            audit=self.audit,
            **options,  # type: ignore[arg-type]
        )
        await self.proxy.start("127.0.0.1", 0)
        return self.proxy


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[tuple[_Upstream, _Upstream, Path]]:
    test_ca, cert, key = make_test_ca(tmp_path, NAMES, ["127.0.0.1"])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    servers = _Upstream(context), _Upstream(None)
    threads = [threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield servers[0], servers[1], test_ca
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        for t in threads:
            t.join(5)


@pytest.fixture
async def env(tmp_path: Path, upstreams: tuple[_Upstream, _Upstream, Path]) -> AsyncIterator[Env]:
    tls, plain, test_ca = upstreams
    ca = NexusCA.load_or_create(tmp_path / "egress-ca")
    ca_file = tmp_path / "nexus-ca.pem"
    ca_file.write_bytes(ca.pem_bytes())
    ports = (tls.port, plain.port)
    vm = VmEgress(
        vm_id="vm-1",
        vm_name="agent",
        mode=EgressMode.PROXY,
        allow=tuple(HostPattern(h, ports) for h in NAMES),
        bindings=(
            Binding(1, "K", "api.test", "x-api-key"),
            Binding(2, "T", "bearer.test", "authorization", bearer=True),
        ),
    )
    e = Env(tls, plain, ca, ca_file, test_ca, ListAudit(), vm)
    try:
        yield e
    finally:
        if e.proxy is not None:
            await e.proxy.close()


def _no_secret_anywhere(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    for value in (SECRET, TOKEN):
        assert value not in caplog.text
        assert all(value not in repr(entry) for entry in env.audit.entries)


async def _raw(env: Env) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert env.proxy is not None
    return await asyncio.open_connection("127.0.0.1", env.proxy.port)


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = int(head.split(b" ", 2)[1])
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    return status, await reader.readexactly(length)


# -- plain forwarding and tunnels


async def test_egress_http_forward(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await env.start()
    async with env.client() as client:
        r = await client.get(f"http://api.test:{env.plain.port}/v1/items?key={placeholder('K')}")
        r2 = await client.post(f"http://other.test:{env.plain.port}/upload", content=b"abc")
    assert (r.status_code, r.text) == (200, f"GET /v1/items?key={placeholder('K')} 0")
    assert (r2.status_code, r2.text) == (200, "POST /upload 3")
    seen = env.plain.seen[0]
    assert seen.header("host") == f"api.test:{env.plain.port}"
    assert seen.header("proxy-connection") is None
    # the query reaches the host, never the audit: path only
    assert env.audit.actions() == [
        (f"GET http://api.test:{env.plain.port}/v1/items", Decision.ALLOW),
        (f"POST http://other.test:{env.plain.port}/upload", Decision.ALLOW),
    ]
    entry = env.audit.entries[0]
    assert (entry.caller, entry.via, entry.target_id, entry.target) == ("vm:agent", Via.EGRESS, "vm-1", "agent")
    assert entry.reason == f"allow-list api.test:{env.tls.port},{env.plain.port}; status 200"
    assert entry.result_bytes > len("GET /v1/items 0") and not entry.is_error
    _no_secret_anywhere(env, caplog)


async def test_egress_connect_plain_tunnel_keeps_placeholders(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await env.start()
    async with env.client() as client:
        r = await client.get(f"https://other.test:{env.tls.port}/v1", headers={"x-api-key": placeholder("K")})
    assert r.status_code == 200
    assert env.tls.seen[0].header("x-api-key") == placeholder("K")  # no binding for other.test: untouched
    await env.audit.settled(1)
    [entry] = env.audit.entries
    assert (entry.action, entry.decision) == (f"CONNECT other.test:{env.tls.port}", Decision.ALLOW)
    assert entry.reason.endswith("; tunnel") and entry.result_bytes > 0
    _no_secret_anywhere(env, caplog)


async def test_egress_large_chunked_answer_streams(env: Env) -> None:
    await env.start()
    async with env.client() as client:
        r = await client.get(f"http://api.test:{env.plain.port}/stream")
        r2 = await client.get(f"https://api.test:{env.tls.port}/stream")
    assert len(r.content) == len(r2.content) == 16 * 0x10000


# -- interception


async def test_egress_intercepts_bound_header_only(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await env.start()
    async with env.client() as client:
        r = await client.post(
            f"https://api.test:{env.tls.port}/v1/messages?beta={placeholder('K')}",
            headers={
                "x-api-key": placeholder("K"),
                "x-other": placeholder("K"),
                "authorization": f"Bearer {placeholder('T')}",
            },
            content=f"body {placeholder('K')}".encode(),
        )
    assert r.status_code == 200
    seen = env.tls.seen[0]
    assert seen.header("x-api-key") == SECRET
    assert seen.header("x-other") == placeholder("K")  # another header: stays
    assert seen.header("authorization") == f"Bearer {placeholder('T')}"  # T is bound to bearer.test only
    assert seen.body == f"body {placeholder('K')}".encode()
    assert seen.path == f"/v1/messages?beta={placeholder('K')}"
    await env.audit.settled(2)
    request, tunnel = env.audit.entries
    assert (request.action, request.decision) == (f"POST https://api.test:{env.tls.port}/v1/messages", Decision.ALLOW)
    assert "secret K in x-api-key" in request.reason and request.reason.endswith("status 200")
    assert (tunnel.action, tunnel.reason.rsplit("; ", 1)[1]) == (f"CONNECT api.test:{env.tls.port}", "intercepted")
    _no_secret_anywhere(env, caplog)


async def test_egress_placeholder_of_unbound_secret_stays(env: Env) -> None:
    env.vm = replace(env.vm, bindings=(*env.vm.bindings, Binding(3, "K2", "other.test", "x-api-key")))
    env.secrets["K2"] = "other-value"
    await env.start()
    async with env.client() as client:
        await client.get(
            f"https://api.test:{env.tls.port}/",
            headers={"x-api-key": f"{placeholder('K2')},{placeholder('K')}x,{placeholder('K')}"},
        )
    # K2 is bound to other.test, "Kx" is no secret's name: only the last one was K's placeholder
    assert env.tls.seen[0].header("x-api-key") == f"{placeholder('K2')},{placeholder('K')}x,{SECRET}"


async def test_egress_bearer(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await env.start()
    async with env.client() as client:
        await client.get(
            f"https://bearer.test:{env.tls.port}/", headers={"Authorization": f"Bearer {placeholder('T')}"}
        )
        await client.get(f"https://bearer.test:{env.tls.port}/", headers={"Authorization": f"Basic {placeholder('T')}"})
    assert env.tls.seen[0].header("authorization") == f"Bearer {TOKEN}"
    assert env.tls.seen[1].header("authorization") == f"Basic {placeholder('T')}"  # a bearer binding is Bearer only
    _no_secret_anywhere(env, caplog)


async def test_egress_keep_alive_in_one_tunnel(env: Env) -> None:
    await env.start()
    async with env.client() as client:
        for path in ("/one", "/two"):
            r = await client.get(f"https://api.test:{env.tls.port}{path}", headers={"x-api-key": placeholder("K")})
            assert r.status_code == 200
    assert [s.header("x-api-key") for s in env.tls.seen] == [SECRET, SECRET]
    await env.audit.settled(3)
    assert [a for a, _ in env.audit.actions()] == [
        f"GET https://api.test:{env.tls.port}/one",
        f"GET https://api.test:{env.tls.port}/two",
        f"CONNECT api.test:{env.tls.port}",  # one tunnel, recorded when it ends
    ]


async def test_egress_chunked_upload(env: Env) -> None:
    async def body() -> AsyncIterator[bytes]:
        for i in range(40):
            yield bytes([65 + i % 26]) * 5000

    await env.start()
    async with env.client() as client:
        r = await client.post(f"https://api.test:{env.tls.port}/up", content=body())
        r2 = await client.post(f"http://api.test:{env.plain.port}/up", content=body())
    assert r.text == r2.text == "POST /up 200000"
    assert env.tls.seen[0].header("transfer-encoding") == "chunked"
    assert env.tls.seen[0].body == b"".join(bytes([65 + i % 26]) * 5000 for i in range(40))


async def test_egress_leaf_verifies_against_nexus_ca(env: Env) -> None:
    await env.start()
    reader, writer = await _raw(env)
    writer.write(f"CONNECT api.test:{env.tls.port} HTTP/1.1\r\nHost: api.test\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(env.ca_file))  # the Nexus CA alone, hostname checked
    context.set_alpn_protocols(["h2", "http/1.1"])
    await writer.start_tls(context, server_hostname="api.test")
    tls = writer.get_extra_info("ssl_object")
    assert tls.selected_alpn_protocol() == "http/1.1"  # never h2 inside an intercepted tunnel
    cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.test"]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=8)
    writer.write(f"GET /raw HTTP/1.1\r\nHost: api.test:{env.tls.port}\r\nConnection: close\r\n\r\n".encode())
    assert await _answer(reader) == (200, b"GET /raw 0")
    writer.close()


async def test_egress_secret_goes_only_to_its_host(env: Env) -> None:
    await env.start()
    async with env.client() as client:
        r = await client.get(
            f"https://api.test:{env.tls.port}/", headers={"Host": "elsewhere.test", "x-api-key": placeholder("K")}
        )
    assert r.status_code == 403 and "not api.test" in r.text
    assert env.tls.seen == []
    assert env.audit.entries[0].decision is Decision.DENY


# -- refusals


async def test_egress_denied_host(env: Env) -> None:
    await env.start()
    async with env.client() as client:
        r = await client.get("http://evil.test/x")
        with pytest.raises(httpx.ProxyError, match="403"):
            await client.get("https://evil.test/x")
    assert r.status_code == 403
    assert r.text == "nexus egress: evil.test:80 is not on VM agent's allow-list\n"
    assert env.audit.actions() == [("GET http://evil.test/x", Decision.DENY), ("CONNECT evil.test:443", Decision.DENY)]
    assert env.audit.entries[1].reason == "evil.test:443 is not on VM agent's allow-list"
    assert (env.audit.entries[1].caller, env.audit.entries[1].target) == ("vm:agent", "agent")


async def test_egress_mode_not_proxy(env: Env) -> None:
    env.vm = replace(env.vm, mode=EgressMode.OPEN)
    await env.start()
    async with env.client() as client:
        r = await client.get(f"http://api.test:{env.plain.port}/")
    assert r.status_code == 403 and "egress mode is open" in r.text
    assert env.plain.seen == []


async def test_egress_unknown_client(env: Env) -> None:
    await env.start()
    env.proxy._resolve = lambda ip: None  # type: ignore[union-attr]
    async with env.client() as client:
        r = await client.get(f"http://api.test:{env.plain.port}/")
    assert (r.status_code, r.text) == (403, "nexus egress: 127.0.0.1 is not a Nexus VM\n")
    [entry] = env.audit.entries
    assert (entry.caller, entry.decision, entry.target_id) == (ANONYMOUS_CALLER, Decision.DENY, None)


async def test_egress_upstream_down(env: Env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    env.vm = replace(env.vm, allow=(*env.vm.allow, HostPattern("down.test", (port,))))
    await env.start()
    async with env.client() as client:
        r = await client.get(f"http://down.test:{port}/")
        with pytest.raises(httpx.ProxyError, match="502"):
            await client.get(f"https://down.test:{port}/")
    assert r.status_code == 502 and r.text.startswith(f"nexus egress: cannot connect to down.test:{port}")
    assert [(e.decision, e.is_error) for e in env.audit.entries] == [(Decision.ALLOW, True)] * 2


async def test_egress_unresolvable_host(env: Env) -> None:
    env.vm = replace(env.vm, allow=(*env.vm.allow, HostPattern("nowhere.test")))
    await env.start()
    async with env.client() as client:
        r = await client.get("http://nowhere.test/")
    assert r.status_code == 502 and "cannot resolve nowhere.test" in r.text


async def test_egress_connect_timeout(env: Env) -> None:
    async def slow(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(5)
        return ["127.0.0.1"]

    await env.start(lookup=slow, connect_timeout=0.2)
    async with env.client() as client:
        r = await client.get(f"http://api.test:{env.plain.port}/")
    assert r.status_code == 504


async def test_egress_host_networks_blocked_unless_named(env: Env) -> None:
    env.vm = replace(env.vm, allow=(*env.vm.allow, HostPattern("127.0.0.1", (env.plain.port,))))
    await env.start(blocked=[ipaddress.ip_network("127.0.0.0/8")])
    async with env.client() as client:
        r = await client.get(f"http://api.test:{env.plain.port}/")
        r2 = await client.get(f"http://127.0.0.1:{env.plain.port}/named")
    assert r.status_code == 403 and "resolves to 127.0.0.1" in r.text
    assert r2.status_code == 200
    assert [d for _, d in env.audit.actions()] == [Decision.DENY, Decision.ALLOW]


async def test_egress_head_too_large(env: Env) -> None:
    await env.start()
    reader, writer = await _raw(env)
    writer.write(b"GET http://api.test/ HTTP/1.1\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n")
    assert (await _answer(reader))[0] == 431
    writer.close()


async def test_egress_idle_tunnel_ends_and_close_ends_tunnels(env: Env) -> None:
    await env.start(idle_timeout=0.3)
    reader, writer = await _raw(env)
    writer.write(f"CONNECT other.test:{env.tls.port} HTTP/1.1\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # nothing moved for 0.3 s
    writer.close()
    assert env.proxy is not None
    await env.proxy.close()
    await env.start(idle_timeout=60)
    reader, writer = await _raw(env)
    writer.write(f"CONNECT other.test:{env.tls.port} HTTP/1.1\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await env.proxy.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_egress_one_client_cannot_hold_every_connection(env: Env) -> None:
    await env.start()
    held = [await _raw(env) for _ in range(MAX_PER_CLIENT)]
    reader, writer = await _raw(env)
    status, body = await _answer(reader)
    assert status == 503 and b"too many connections" in body
    writer.close()
    for _, w in held[:1]:
        w.close()
        await w.wait_closed()
    await asyncio.sleep(0.1)  # the proxy sees that one go
    reader, writer = await _raw(env)  # room again: it is served (here: a bad request, answered)
    writer.write(b"BROKEN\r\n\r\n")
    assert (await _answer(reader))[0] == 400
    for _, w in [*held[1:], (reader, writer)]:
        w.close()
