"""CLI start-up: wall time of ``nexusctl version`` and ``nexusctl vm list`` (20 VMs stored) against a bare
``python -c pass`` measured the same way in the same run. Every nexusctl call is a new process, so what it imports
before it does anything is paid on every command."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from bench.common import nexusd, percentile, print_table

RUNS = 20
VMS = 20
STACK = "import typer, rich.console, pydantic, httpx, httpcore"
GOALS_MS = {"version": 150.0, "vm list": 250.0}  # issue 20: docker answers in ~50 ms


def _wall(argv: list[str]) -> list[float]:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def run() -> None:
    with nexusd() as daemon:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://nexusd") as c:
            for i in range(VMS):
                c.post("/v1/vms", json={"name": f"cli-{i:02d}"}).raise_for_status()
        cli = [sys.executable, "-m", "nexus.cli.main", "--socket", str(daemon.socket)]
        samples = {
            "python -c pass": _wall([sys.executable, "-c", "pass"]),
            # the floor of this stack: what nexusctl must import before it can parse argv and send one request
            "import the stack": _wall([sys.executable, "-c", STACK]),
            "version": _wall([*cli, "version"]),
            "vm list": _wall([*cli, "vm", "list"]),
        }
    base = percentile(samples["python -c pass"], 50) * 1e3
    rows = []
    for name, times in samples.items():
        p50, p99 = percentile(times, 50) * 1e3, percentile(times, 99) * 1e3
        goal = GOALS_MS.get(name)
        verdict = "" if goal is None else ("yes" if p50 <= goal else "NO") + f" (≤ {goal:.0f})"
        rows.append((name, f"{p50:.0f}", f"{p99:.0f}", f"{p50 / base:.1f}", verdict))
    print_table(
        f"CLI start-up, wall ms over {RUNS} runs (nexusctl as python -m nexus.cli.main)",
        ["command", "p50", "p99", "x python", "meets goal"],
        rows,
    )
