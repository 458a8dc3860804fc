"""MCP latency: what nexusd adds to an MCP ``tools/call`` (a 1-byte ``file_read`` in a real QEMU VM), per way in,
against the raw agent channel measured in the same run. Goal: nexusd adds at most 2 ms p50 on every path.

Paths, each ``--mcp-calls`` sequential calls (default 200), interleaved round-robin (the order rotating each
round) so that every path sees the same machine load:

baseline  ``tools/call file_read`` straight down the agent's MCP virtio-serial port, newline JSON-RPC, the way
          ``GuestService.call_tool`` sends it (``bench.vm_boot.RawLink``): no nexusd, no HTTP.
unix      the official MCP SDK client (``mcp.Client``, Streamable HTTP, ``mode="legacy"``: a session with the
          initialize handshake) on ``/v1/vms/{ref}/mcp`` over nexusd's Unix socket.
tcp       the same over nexusd's TCP listener on 127.0.0.1 (``--listen``, ``--token-file``), with the admin token as
          ``Authorization: Bearer``.
bridge    the SDK's stdio client through ``nexusctl mcp-bridge REF`` (a child process, Unix socket to nexusd).

Two more rows say where the time goes, with no goal of their own: ``rest``, ``POST /v1/vms/{ref}/tools/file_read``
over the Unix socket (nexusd's HTTP stack and guest link, no MCP), and ``mcp-raw``, the same MCP POST as ``unix``
sent by a plain httpx client (nexusd's MCP server side without the SDK client's own cost).

Why the baseline is a second VM: nexusd holds the only connection to its VM's virtio-serial ports (a QEMU
chardev socket serves one client), so the raw channel cannot be spoken to beside it. The baseline is a QEMU that
this benchmark starts by hand with the argv nexusd's driver builds, same kernel, initramfs, image (a copy) and
memory — the same guest code on the other end of the same kind of channel, as in ``python -m bench vm``. An
``AF_VSOCK`` baseline (Firecracker's) is not measured: this benchmark never opens a vsock.

State: a temp dir of its own in /var/tmp whose kernel cache links to the e2e one and whose database knows the e2e
images (``bench.soak.link_state``, as tests/e2e does); without those assets it falls back to the vm benchmark's
own state ($NEXUS_BENCH_STATE), where the kernel is fetched and the image built once. nexusd runs with
``--stop-vms-on-exit``; the VM is removed and both VMMs stopped by PID however the run ends (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from tests.helpers import free_port

from bench import vm_boot
from bench.common import nexusd, percentile, print_table
from bench.soak import MissingAssets, link_state
from nexus.daemon.adapters import DebianKernels

CALLS = 200
WARMUP = 10
GOAL_MS = 2.0
VM = "bench-mcp"
MEM_MIB = 512
FILE = "/tmp/bench-one"
READ_ARGS = {"path": FILE, "length": 1}
ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-11-25"

Call = Callable[[], Awaitable[None] | None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mcp (python -m bench mcp)")
    group.add_argument(
        "--mcp-calls", type=int, default=CALLS, help=f"timed tools/call per path (default {CALLS})", metavar="N"
    )


def _token_file(base: Path) -> tuple[Path, str]:
    token = secrets.token_urlsafe(32)
    path = base / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path, token


@contextlib.contextmanager
def _state() -> Iterator[tuple[Path, Path, str | None]]:
    """(temp dir, state dir, image name or None to build one) for this run; the temp dir goes at the end."""
    base = Path(tempfile.mkdtemp(prefix="nxbench-mcp-", dir="/var/tmp"))
    try:
        try:
            state, image = link_state(base)
            _pin_image(state, image)
            yield base, state, image
        except MissingAssets as exc:
            print(f"mcp: no e2e assets ({exc}); using {vm_boot.STATE} (kernel fetched, image built once)")
            yield base, vm_boot.STATE, None
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _pin_image(state: Path, name: str) -> None:
    """Give our state dir its own name for the shared image file (a hard link, else a sparse copy): the e2e runs
    that own /var/tmp/nexus-e2e replace their images whenever the agent changes, which must not pull the file
    from under this run."""
    conn = sqlite3.connect(state / "nexus.db")
    try:
        (shared,) = conn.execute("SELECT path FROM images WHERE name = ?", (name,)).fetchone()
        mine = state / "images" / Path(shared).name
        mine.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(shared, mine)
        except OSError:
            subprocess.run(["cp", "--sparse=always", shared, str(mine)], check=True)
        with conn:
            conn.execute("UPDATE images SET path = ? WHERE name = ?", (str(mine), name))
    finally:
        conn.close()
    print(f"mcp: image {name} (pinned from {shared})")


class McpPost:
    """The MCP POST with no SDK: a plain httpx client doing the handshake, then one tools/call per ``call``."""

    def __init__(self, sock: Path, ref: str) -> None:
        self.http = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://nexusd", timeout=60)
        self.path = f"/v1/vms/{ref}/mcp"
        self.headers = {"accept": ACCEPT, "content-type": "application/json"}
        init = self._post({"method": "initialize", "params": _init_params("bench-raw-http")}, 1)
        self.headers["mcp-session-id"] = init.headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = PROTOCOL
        self.http.post(
            self.path, headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        ).raise_for_status()
        self.next_id = 1

    def _post(self, message: dict[str, Any], request_id: int) -> httpx.Response:
        response = self.http.post(self.path, headers=self.headers, json={"jsonrpc": "2.0", "id": request_id, **message})
        response.raise_for_status()
        return response

    def call(self, arguments: dict[str, Any] = READ_ARGS) -> Any:
        """One ``file_read`` with ``arguments``; its answer (RuntimeError when it failed)."""
        self.next_id += 1
        response = self._post({"method": "tools/call", "params": {"name": "file_read", "arguments": arguments}}, 0)
        text = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
        answer = json.loads(text)
        if "result" not in answer or answer["result"].get("isError"):
            raise RuntimeError(f"file_read over raw MCP HTTP: {answer}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self.http.delete(self.path, headers=self.headers)
        self.http.close()


def _init_params(name: str) -> dict[str, Any]:
    return {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": name, "version": "0"}}


def _checked(result: Any) -> None:
    if getattr(result, "is_error", False) or not result.content or result.content[0].text != "x":
        raise RuntimeError(f"file_read through MCP answered {result}")


async def _measure(
    calls: int, sock: Path, port: int, token: str, raw: vm_boot.RawVm, api: httpx.Client
) -> dict[str, list[float]]:
    from mcp import Client, StdioServerParameters
    from mcp.client.streamable_http import streamable_http_client

    timeout = httpx2.Timeout(30, read=120)
    async with contextlib.AsyncExitStack() as stack:
        unix_http = await stack.enter_async_context(
            httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(sock)), timeout=timeout)
        )
        unix = await stack.enter_async_context(
            Client(streamable_http_client(f"http://nexusd/v1/vms/{VM}/mcp", http_client=unix_http), mode="legacy")
        )
        tcp_http = await stack.enter_async_context(
            httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=timeout)
        )
        tcp = await stack.enter_async_context(
            Client(
                streamable_http_client(f"http://127.0.0.1:{port}/v1/vms/{VM}/mcp", http_client=tcp_http), mode="legacy"
            )
        )
        argv = [sys.executable, "-m", "nexus.cli.main", "--socket", str(sock), "mcp-bridge", VM]
        bridge = await stack.enter_async_context(
            Client(
                StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ)),
                mode="legacy",
                read_timeout_seconds=120,
            )
        )
        mcp_raw = McpPost(sock, VM)
        stack.callback(mcp_raw.close)

        async def sdk(client: Any) -> None:
            _checked(await client.call_tool("file_read", READ_ARGS))

        # The three clients below are blocking: run on the loop's thread between awaits, as nothing else is due.
        def baseline() -> None:
            result = raw.mcp.call("tools/call", {"name": "file_read", "arguments": READ_ARGS})
            if result.get("isError") or result["content"][0]["text"] != "x":
                raise RuntimeError(f"file_read on the raw channel answered {result}")

        def rest() -> None:
            answer = api.post(f"/v1/vms/{VM}/tools/file_read", json=READ_ARGS)
            answer.raise_for_status()

        def raw_http() -> None:
            mcp_raw.call()

        paths: dict[str, Call] = {
            "baseline": baseline,
            "rest": rest,
            "mcp-raw": raw_http,
            "unix": lambda: sdk(unix),
            "tcp": lambda: sdk(tcp),
            "bridge": lambda: sdk(bridge),
        }
        names = list(paths)
        for _ in range(WARMUP):
            for name in names:
                if inspect.isawaitable(answer := paths[name]()):
                    await answer
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i in range(calls):
            k = i % len(names)
            for name in names[k:] + names[:k]:
                start = time.perf_counter()
                if inspect.isawaitable(answer := paths[name]()):
                    await answer
                samples[name].append(time.perf_counter() - start)
        return samples


LABELS = {
    "baseline": "baseline: raw agent channel (virtio-serial, no nexusd)",
    "rest": "  nexusd REST POST /tools/file_read, Unix socket (no MCP)",
    "mcp-raw": "  nexusd MCP endpoint, Unix socket, plain httpx (no SDK)",
    "unix": "SDK, Unix socket /v1/vms/{ref}/mcp",
    "tcp": "SDK, TCP 127.0.0.1 + bearer token",
    "bridge": "SDK stdio, nexusctl mcp-bridge",
}
GOAL_PATHS = ("unix", "tcp", "bridge")


def _report(calls: int, samples: dict[str, list[float]]) -> int:
    base50 = percentile(samples["baseline"], 50) * 1e3
    rows = []
    missed = []
    for name, label in LABELS.items():
        xs = samples[name]
        p50, p99, mean = percentile(xs, 50) * 1e3, percentile(xs, 99) * 1e3, statistics.fmean(xs) * 1e3
        added = p50 - base50
        if name == "baseline":
            verdict, added_cell = "", ""
        else:
            added_cell = f"{added:+.2f}"
            ok = added <= GOAL_MS
            verdict = ("yes" if ok else "NO") if name in GOAL_PATHS else "(info)"
            if name in GOAL_PATHS and not ok:
                missed.append(name)
        rows.append((label, f"{p50:.2f}", f"{p99:.2f}", f"{mean:.2f}", added_cell, verdict))
    print_table(
        f"MCP tools/call file_read (1 byte), {calls} sequential calls per path, interleaved (ms)",
        ["path", "p50", "p99", "mean", "added p50", f"≤ {GOAL_MS:g} ms"],
        rows,
    )
    verdict = f"missed on {', '.join(missed)}" if missed else "met"
    print(f"goal (nexusd adds ≤ {GOAL_MS:g} ms p50 on every path): {verdict}")
    return 0


def run(args: argparse.Namespace) -> int:
    calls: int = getattr(args, "mcp_calls", CALLS)
    if shutil.which("qemu-system-x86_64") is None:
        print("mcp: qemu-system-x86_64 is missing", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM'd bench still cleans up
    try:
        with _state() as (base, state, image):
            token_file, token = _token_file(base)
            port = free_port()
            extra = ("--listen", f"127.0.0.1:{port}", "--token-file", str(token_file), "--stop-vms-on-exit")
            with (
                nexusd(*extra, state_dir=state) as daemon,
                httpx.Client(
                    transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd", timeout=600
                ) as api,
            ):
                try:
                    return _with_vms(calls, daemon.socket, port, token, base, state, api, image)
                except Exception:
                    tail = daemon.log.read_text(errors="replace").splitlines()[-20:]
                    print("mcp: failed; nexusd's log ends:", *tail, sep="\n  ", file=sys.stderr)
                    raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_vms(
    calls: int, sock: Path, port: int, token: str, base: Path, state: Path, api: httpx.Client, image: str | None
) -> int:
    raw: vm_boot.RawVm | None = None
    vmm_pid: int | None = None
    try:
        for vm in api.get("/v1/vms").json():  # left by a run that could not clean up (fallback state only)
            if vm["name"] == VM:
                api.delete(f"/v1/vms/{vm['id']}", params={"force": True})
        image = image or vm_boot.agent_image(api)
        api.post("/v1/vms", json={"name": VM, "mem_mib": MEM_MIB, "image": image}).raise_for_status()
        with api.stream("POST", f"/v1/vms/{VM}/prepare") as r:  # fetch/build once, untimed
            r.read()
        cache = state / "cache"
        kernels = DebianKernels(cache)
        kernel = kernels.get(api.get(f"/v1/vms/{VM}").json()["kernel"])
        initrd = kernels.initrd(kernel)
        image_path = Path(api.get(f"/v1/images/{image}").json()["path"])
        work = base / "raw"
        work.mkdir()
        raw = vm_boot.RawVm(kernel, initrd, image_path, work, cache=cache, mem_mib=MEM_MIB)
        api.post(f"/v1/vms/{VM}/start").raise_for_status()
        vmm_pid = api.get(f"/v1/vms/{VM}").json().get("pid")
        api.put(f"/v1/vms/{VM}/files", params={"path": FILE}, content=b"x").raise_for_status()
        raw.mcp.call("tools/call", {"name": "file_write", "arguments": {"path": FILE, "content": "x"}})
        print(f"mcp: nexusd VM {VM} and a raw QEMU ready; {calls} calls per path, nexusd on 127.0.0.1:{port} too")
        samples = anyio.run(_measure, calls, sock, port, token, raw, api)
        return _report(calls, samples)
    finally:
        if raw is not None:
            raw.close()
        with contextlib.suppress(httpx.HTTPError):
            api.delete(f"/v1/vms/{VM}", params={"force": True})
        _kill_if_left(vmm_pid)


def _kill_if_left(pid: int | None) -> None:
    """SIGKILL nexusd's VMM ``pid`` if it still runs after the VM was removed (nexusd could not stop it)."""
    if pid is None:
        return
    for _ in range(100):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"qemu" not in cmdline:
            return  # gone, and the pid is another process's now
        time.sleep(0.1)
    print(f"mcp: nexusd left its VMM {pid} running; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
