"""API latency: GET /v1/vms with 100 VMs stored, at 1, 10 and 50 concurrent clients, against GET /v1/health
(no database work) measured the same way in the same run; plus nexusd's resident memory."""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.common import RunningDaemon, nexusd, percentile, print_table

VMS = 100
REQUESTS_PER_LEVEL = 1000
CONCURRENCY = (1, 10, 50)


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """One keep-alive HTTP/1.1 GET; returns the status. A raw client, so the client's own cost stays small."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return status


async def _measure(sock: str, path: str, clients: int, total: int) -> list[float]:
    latencies: list[float] = []
    request = f"GET {path} HTTP/1.1\r\nHost: nexusd\r\n\r\n".encode()

    async def one_client() -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        try:
            await _get(reader, writer, request)  # warm the connection, untimed
            for _ in range(total // clients):
                start = time.perf_counter()
                status = await _get(reader, writer, request)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    raise RuntimeError(f"GET {path} answered {status}")
        finally:
            writer.close()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


def _fill(daemon: RunningDaemon) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd") as c:
        for i in range(VMS):
            c.post("/v1/vms", json={"name": f"bench-{i:03d}", "tags": ["bench", f"n{i % 7}"]}).raise_for_status()
        assert len(c.get("/v1/vms").json()) == VMS


def run() -> None:
    rows = []
    with nexusd() as daemon:
        _fill(daemon)
        rss_idle = daemon.rss_mib()
        sock = str(daemon.socket)
        for clients in CONCURRENCY:
            vms = asyncio.run(_measure(sock, "/v1/vms", clients, REQUESTS_PER_LEVEL))
            base = asyncio.run(_measure(sock, "/v1/health", clients, REQUESTS_PER_LEVEL))
            b50, b99 = percentile(base, 50) * 1e3, percentile(base, 99) * 1e3
            v50, v99 = percentile(vms, 50) * 1e3, percentile(vms, 99) * 1e3
            rows.append((clients, f"{v50:.2f}", f"{v99:.2f}", f"{b50:.2f}", f"{b99:.2f}", f"{v50 / b50:.2f}"))
        rss_after = daemon.rss_mib()
    print_table(
        f"API latency, GET /v1/vms with {VMS} VMs vs GET /v1/health (ms; {REQUESTS_PER_LEVEL} requests per level)",
        ["clients", "vms p50", "vms p99", "health p50", "health p99", "p50 ratio"],
        rows,
    )
    print(f"nexusd RSS: {rss_idle:.1f} MiB after creating {VMS} VMs, {rss_after:.1f} MiB after the runs")
