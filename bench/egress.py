"""Egress proxy cost: HTTPS GETs straight to a server vs through nexusd's egress proxy, in the same run.

Three paths, each ``REQUESTS`` sequential GETs on one kept-alive client (httpx), in rounds that alternate the
paths so that each sees the same load:

direct       the client to the server (TLS to a test CA's certificate).
tunnel       through the proxy, host allowed and no secret bound: a CONNECT tunnel, TLS end to end.
intercepted  through the proxy with a secret bound to the host: the proxy terminates TLS with the Nexus CA,
             puts the secret in the bound header and sends each request on over its own verified TLS connection.

All on loopback in this process's threads (server, proxy in an asyncio loop, client), so the figures compare the
paths, not a network. The proxy is the real ``nexus.egress.EgressProxy`` with the audit log it records into kept in
memory.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from tests.tls import make_test_ca

from bench.common import percentile, print_table
from nexus.domain.audit import AuditEntry
from nexus.domain.egress import Binding, EgressMode, HostPattern, VmEgress, placeholder
from nexus.egress import EgressProxy, NexusCA, upstream_context

REQUESTS = 300
ROUNDS = 3
HOST = "api.test"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real API is
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between them

    def do_GET(self) -> None:
        body = json.dumps({"key": self.headers.get("x-api-key")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Audit:
    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


def _timed(get: Callable[[], httpx.Response], expect: str | None) -> list[float]:
    samples = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        answer = get()
        samples.append(time.perf_counter() - start)
        if answer.status_code != 200 or answer.json()["key"] != expect:
            raise RuntimeError(f"unexpected answer: {answer.status_code} {answer.text}")
    return samples


def run(args: argparse.Namespace | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="nexus-bench-egress-") as tmp:
        base = Path(tmp)
        ca_file, cert, key = make_test_ca(base, [HOST], ["127.0.0.1"])
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()

        nexus_ca = NexusCA.load_or_create(base / "nexus-ca")
        bound = {"on": False}

        def resolve(client: str) -> VmEgress | None:
            bindings = (Binding(1, "K", HOST, "x-api-key", vm_id="v"),) if bound["on"] else ()
            return VmEgress("v", "bench", EgressMode.PROXY, (HostPattern(HOST, (port,)),), bindings)

        async def lookup(host: str, _port: int) -> list[str]:
            return ["127.0.0.1"]

        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        proxy = EgressProxy(
            resolve=resolve,
            secret_value=lambda name: "sk-bench-value",
            ca=nexus_ca,
            upstream_ssl=upstream_context(ca_file),
            audit=_Audit(),
            lookup=lookup,
            blocked=(),  # the server is on loopback, which the proxy keeps VMs from by default
        )
        asyncio.run_coroutine_threadsafe(proxy.start("127.0.0.1", 0), loop).result(10)
        trust = ssl.create_default_context(cafile=str(ca_file))
        trust.load_verify_locations(cadata=nexus_ca.pem_bytes().decode())
        via = f"http://127.0.0.1:{proxy.port}"
        headers = {"x-api-key": placeholder("K")}
        clients = {
            "direct": httpx.Client(verify=trust, headers=headers),
            "tunnel": httpx.Client(verify=trust, proxy=via, headers=headers),
            "intercepted": httpx.Client(verify=trust, proxy=via, headers=headers),
        }
        urls = {"direct": f"https://127.0.0.1:{port}/", "tunnel": f"https://{HOST}:{port}/"}
        urls["intercepted"] = urls["tunnel"]
        samples: dict[str, list[float]] = {name: [] for name in clients}
        try:
            for _ in range(ROUNDS):
                for name, client in clients.items():
                    bound["on"] = name == "intercepted"
                    expect = "sk-bench-value" if bound["on"] else placeholder("K")
                    samples[name] += _timed(functools.partial(client.get, urls[name]), expect)
        finally:
            for client in clients.values():
                client.close()
            asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            server.shutdown()
    direct = percentile(samples["direct"], 50)
    rows = []
    for name, times in samples.items():
        p50, p99 = percentile(times, 50), percentile(times, 99)
        rows.append(
            (
                name,
                f"{p50 * 1e3:.2f}",
                f"{p99 * 1e3:.2f}",
                f"{(p50 - direct) * 1e3:+.2f}",
                f"{len(times) / sum(times):.0f}",
            )
        )
    print_table(
        f"Egress proxy: HTTPS GET on loopback, {ROUNDS}x{REQUESTS} per path, one kept-alive client each",
        ["path", "p50 ms", "p99 ms", "added p50 ms", "req/s"],
        rows,
    )
    return 0
