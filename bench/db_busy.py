"""The API while another process holds the state database's write lock: 50 clients on GET /v1/health and one
client writing (POST tags) for 2.5 s, first on a quiet database (the baseline), then while a second process holds
``BEGIN IMMEDIATE`` for 2 s, in the same run. nexusd's statements must never stall its event loop: reads do not
wait for a writer (WAL), a write waits at most 100 ms for the lock and then answers 503."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import nexusd, percentile, print_table

CLIENTS = 50
WINDOW_S = 2.5
HOLD_S = 2.0
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding ``db``'s write lock for ``seconds``; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    if proc.stdout is None or proc.stdout.readline().strip() != "locked":
        proc.kill()
        raise RuntimeError(f"could not lock {db}")
    return proc


@dataclass
class Phase:
    health: list[float] = field(default_factory=list)
    writes_ok: int = 0
    writes_busy: int = 0
    write_latency: list[float] = field(default_factory=list)


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _phase(sock: str) -> Phase:
    phase = Phase()
    deadline = time.monotonic() + WINDOW_S
    health = b"GET /v1/health HTTP/1.1\r\nHost: nexusd\r\n\r\n"
    body = b'{"tags": ["bench=busy"]}'
    tag = (
        b"POST /v1/vms/bench-busy/tags HTTP/1.1\r\nHost: nexusd\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    async def reader_client() -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                if await _request(reader, writer, health) != 200:
                    raise RuntimeError("GET /v1/health failed")
                phase.health.append(time.perf_counter() - started)
        finally:
            writer.close()

    async def writer_client() -> None:
        reader, writer = await asyncio.open_unix_connection(sock)
        try:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status = await _request(reader, writer, tag)
                phase.write_latency.append(time.perf_counter() - started)
                if status == 200:
                    phase.writes_ok += 1
                elif status == 503:
                    phase.writes_busy += 1
                else:
                    raise RuntimeError(f"POST tags answered {status}")
        finally:
            writer.close()

    await asyncio.gather(writer_client(), *(reader_client() for _ in range(CLIENTS)))
    return phase


def run() -> None:
    with nexusd() as daemon:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd") as c:
            c.post("/v1/vms", json={"name": "bench-busy"}).raise_for_status()
        sock = str(daemon.socket)
        quiet = asyncio.run(_phase(sock))
        locker = hold_write_lock(Path(daemon.state_dir) / "nexus.db", HOLD_S)
        try:
            busy = asyncio.run(_phase(sock))
        finally:
            locker.wait()
    rows = []
    for name, phase in (("quiet", quiet), (f"locked {HOLD_S:.0f} s", busy)):
        rows.append(
            (
                name,
                len(phase.health),
                f"{percentile(phase.health, 50) * 1e3:.1f}",
                f"{percentile(phase.health, 99) * 1e3:.1f}",
                f"{max(phase.health) * 1e3:.1f}",
                phase.writes_ok,
                phase.writes_busy,
                f"{max(phase.write_latency) * 1e3:.0f}",
            )
        )
    print_table(
        f"{CLIENTS} clients on GET /v1/health + 1 writing, {WINDOW_S} s each; another process holds the write lock "
        f"for {HOLD_S:.0f} s in the second (ms)",
        ["phase", "requests", "health p50", "health p99", "health max", "writes ok", "writes 503", "write max"],
        rows,
    )
    ratio = percentile(busy.health, 99) / percentile(quiet.health, 99)
    print(f"health p99 locked / quiet: {ratio:.2f} (goal: p99 under 100 ms while locked)")


if __name__ == "__main__":
    run()
