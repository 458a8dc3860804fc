"""VM benchmarks, each against a baseline measured in the same run on the same kernel, initramfs and image:

P1  nexusctl-equivalent ``POST /v1/vms/{ref}/start`` → ready, vs. raw QEMU (same argv) → the agent's hello.
P2  a 1-byte file_read through the API, vs. a raw ``nexus/echo`` over the same kind of channel (the ratio is
    nexusd's own overhead); run_command("true") through the API beside it.
MCP the same file_read through nexusd's MCP endpoint (official SDK client, Streamable HTTP) vs. the raw channel.
P3  64 MiB written to a guest file through the API (1 MiB chunks), vs. the same file_write calls sent straight
    down the raw channel.

The raw side is a QEMU started by this benchmark with the argv the driver builds, spoken to over its
virtio-serial sockets directly. State persists in $NEXUS_BENCH_STATE (default /var/tmp/nexus-bench) so the
kernel and image are fetched and built once per machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import httpx2

import nexus
from bench.common import nexusd, percentile, print_table
from nexus.daemon.adapters import DebianKernels
from nexus.domain import Kernel, LaunchSpec
from nexus.images.agentinstall import agent_digest
from nexus.protocol import LineBuffer, encode_message
from nexus.vmm.qemu.accel import choose_accel
from nexus.vmm.qemu.driver import QemuDriver
from nexus.vmm.qemu.hostclock import host_tsc_khz
from nexus.workspaces import clone_file

STATE = Path(os.environ.get("NEXUS_BENCH_STATE", "/var/tmp/nexus-bench"))
BOOTS = 5
AGENT_IMAGE_PREFIX = "bench-agent-"
CALLS = 200
WRITE_MIB = 64
CHUNK = 1024 * 1024


class RawLink:
    """A blocking newline JSON-RPC client on one virtio-serial chardev socket."""

    def __init__(self, path: Path, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.005)
        self.buf = LineBuffer()
        self.next_id = 0

    def message(self) -> dict[str, Any]:
        while (line := self.buf.next_line()) is None:
            data = self.sock.recv(1 << 20)
            if not data:
                raise EOFError("guest closed the channel")
            self.buf.feed(data)
        result: dict[str, Any] = json.loads(line)
        return result

    def call(self, method: str, params: dict[str, Any]) -> Any:
        self.next_id += 1
        self.sock.sendall(encode_message({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self.message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def close(self) -> None:
        self.sock.close()


class RawVm:
    """QEMU started by hand with the driver's argv; timed from spawn to the agent's hello."""

    def __init__(
        self, kernel: Kernel, initrd: Path, image: Path, work: Path, cache: Path = STATE / "cache", mem_mib: int = 512
    ) -> None:
        self.work = work
        root = work / "root.img"
        clone_file(image, root)
        spec = LaunchSpec(
            vm_id="bench",
            name="bench-raw",
            vcpus=1,
            mem_mib=mem_mib,
            kernel=kernel.boot_file,
            kernel_version=kernel.version,
            initrd=initrd,
            root_drive=root,
            console_log=work / "console.log",
            runtime_dir=work / "run",
        )
        driver = QemuDriver(cache / "accel.json", host_tsc_khz().khz)
        accel = choose_accel(cache / "accel.json", spec.kernel, initrd, kernel.version).accel
        spec.runtime_dir.mkdir()
        argv = driver.launch_argv(spec, accel)
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            self.control = RawLink(spec.runtime_dir / "control.sock", 10)
            while self.control.message().get("method") != "nexus/hello":
                pass
            self.boot_s = time.perf_counter() - start
            self.mcp = RawLink(spec.runtime_dir / "mcp.sock", 10)
            self.mcp.call(
                "initialize",
                {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
            )
        except BaseException:  # no hello (or Ctrl-C meanwhile): the QEMU we started goes with us
            self.proc.kill()
            self.proc.wait()
            raise

    def close(self) -> None:
        self.control.close()
        self.mcp.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _time(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def agent_image(api: httpx.Client) -> str:
    """An image carrying this checkout's agent (built once per agent version, untimed); older ones removed."""
    name = AGENT_IMAGE_PREFIX + agent_digest(Path(nexus.__file__).parent)
    names = {i["name"] for i in api.get("/v1/images").json()}
    if name not in names:
        with api.stream("POST", "/v1/images", json={"base": "debian-bookworm", "name": name}) as r:
            r.read()
        api.get(f"/v1/images/{name}").raise_for_status()
    for stale in names - {name}:
        if stale.startswith(AGENT_IMAGE_PREFIX):
            api.delete(f"/v1/images/{stale}")
    return name


def run() -> None:
    with (
        nexusd(state_dir=STATE) as daemon,
        httpx.Client(
            transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd", timeout=600
        ) as api,
    ):
        for vm in api.get("/v1/vms").json():
            if vm["name"].startswith("bench-"):
                api.delete(f"/v1/vms/{vm['id']}", params={"force": True})
        image_name = agent_image(api)
        api.post("/v1/vms", json={"name": "bench-api", "mem_mib": 512, "image": image_name}).raise_for_status()
        with api.stream("POST", "/v1/vms/bench-api/prepare") as r:  # fetch/build once, untimed
            r.read()
        kernel = DebianKernels(STATE / "cache").get(api.get("/v1/vms/bench-api").json()["kernel"])
        initrd = DebianKernels(STATE / "cache").initrd(kernel)
        image = Path(api.get(f"/v1/images/{image_name}").json()["path"])

        raw_boots: list[float] = []
        api_boots: list[float] = []
        with tempfile.TemporaryDirectory(prefix="nexus-bench-raw-") as tmp:
            raws = []
            try:
                for i in range(BOOTS):
                    work = Path(tmp) / str(i)
                    work.mkdir()
                    raws.append(RawVm(kernel, initrd, image, work))
                    raw_boots.append(raws[-1].boot_s)
                    if i < BOOTS - 1:
                        raws[-1].close()
                    t = time.perf_counter()
                    api.post("/v1/vms/bench-api/start").raise_for_status()
                    api_boots.append(time.perf_counter() - t)
                    if i < BOOTS - 1:
                        api.post("/v1/vms/bench-api/stop").raise_for_status()
                _calls_and_throughput(api, daemon.socket, raws[-1], raw_boots, api_boots)
                for line in daemon.log.read_text().splitlines():
                    if "launched in" in line:
                        print("nexusd:", line.split(": ", 1)[-1])
            finally:
                if raws:
                    raws[-1].close()
                api.delete("/v1/vms/bench-api", params={"force": True})


async def _mcp_calls(sock: Path, raw: RawVm, read_args: dict[str, Any]) -> tuple[list[float], list[float]]:
    """file_read through nexusd's MCP endpoint with the official SDK client, interleaved with the raw channel."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=str(sock)), timeout=60)
    through_mcp: list[float] = []
    through_raw: list[float] = []
    url = "http://nexusd/v1/vms/bench-api/mcp"
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        for _ in range(CALLS // 2):
            t = time.perf_counter()
            await client.call_tool("file_read", read_args)
            through_mcp.append(time.perf_counter() - t)
            through_raw += _time(lambda: raw.mcp.call("tools/call", {"name": "file_read", "arguments": read_args}), 1)
    return through_mcp, through_raw


def _calls_and_throughput(
    api: httpx.Client, sock: Path, raw: RawVm, raw_boots: list[float], api_boots: list[float]
) -> None:
    api.put("/v1/vms/bench-api/files", params={"path": "/tmp/one"}, content=b"x").raise_for_status()
    read_args = {"path": "/tmp/one", "length": 1}
    raw.mcp.call("tools/call", {"name": "file_write", "arguments": {"path": "/tmp/one", "content": "x"}})
    # Interleaved, so both VMs are measured under the same conditions.
    raw_echo, raw_read, api_read = [], [], []
    for _ in range(CALLS):
        raw_echo += _time(lambda: raw.mcp.call("nexus/echo", {"x": "y"}), 1)
        raw_read += _time(lambda: raw.mcp.call("tools/call", {"name": "file_read", "arguments": read_args}), 1)
        api_read += _time(lambda: api.post("/v1/vms/bench-api/tools/file_read", json=read_args).raise_for_status(), 1)
    mcp_read, mcp_raw_read = asyncio.run(_mcp_calls(sock, raw, read_args))
    api_true = _time(
        lambda: api.post("/v1/vms/bench-api/tools/run_command", json={"command": ["true"]}).raise_for_status(), 50
    )

    chunk = os.urandom(CHUNK)
    encoded = base64.b64encode(chunk).decode()

    def raw_write() -> None:
        for n in range(WRITE_MIB):
            raw.mcp.call(
                "tools/call",
                {
                    "name": "file_write",
                    "arguments": {"path": "/tmp/big-raw", "content": encoded, "encoding": "base64", "append": n > 0},
                },
            )

    def api_write() -> None:
        for n in range(WRITE_MIB):
            api.put(
                "/v1/vms/bench-api/files", params={"path": "/tmp/big-api", "append": n > 0}, content=chunk
            ).raise_for_status()

    raw_w = _time(raw_write, 1)[0]
    api_w = _time(api_write, 1)[0]

    med = statistics.median
    p1 = med(api_boots) / med(raw_boots)
    read_ms, echo_ms, raw_read_ms, true_ms, mcp_ms, mcp_raw_ms = (
        percentile(x, 50) * 1e3 for x in (api_read, raw_echo, raw_read, api_true, mcp_read, mcp_raw_read)
    )
    api_mibs, raw_mibs = WRITE_MIB / api_w, WRITE_MIB / raw_w
    rows = [
        ("P1 start→ready (s)", f"{med(api_boots):.2f}", f"{med(raw_boots):.2f}", f"{p1:.2f}", "≤ 1.10"),
        ("P2 1-byte file_read p50 (ms)", f"{read_ms:.2f}", f"{echo_ms:.2f}", f"{read_ms / echo_ms:.2f}", "≤ 1.5"),
        (
            "   same file_read, raw channel (ms)",
            f"{read_ms:.2f}",
            f"{raw_read_ms:.2f}",
            f"{read_ms / raw_read_ms:.2f}",
            "",
        ),
        ("   file_read via MCP HTTP p50 (ms)", f"{mcp_ms:.2f}", f"{mcp_raw_ms:.2f}", f"{mcp_ms / mcp_raw_ms:.2f}", ""),
        ("   run_command('true') p50 (ms)", f"{true_ms:.2f}", "", "", ""),
        (
            f"P3 {WRITE_MIB} MiB file_write (MiB/s)",
            f"{api_mibs:.1f}",
            f"{raw_mibs:.1f}",
            f"{api_mibs / raw_mibs:.2f}",
            "≥ 0.5",
        ),
    ]
    print_table(
        f"VM benchmarks (nexusd vs raw QEMU and channel; {BOOTS} boots each, {CALLS} calls)",
        ["measure", "nexusd", "raw", "ratio", "goal"],
        rows,
    )
    print(f"boots (s): nexusd {[round(b, 2) for b in api_boots]}, raw {[round(b, 2) for b in raw_boots]}")
