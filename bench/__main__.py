"""``python -m bench [NAME ...]``: run benchmarks (all but soak by default) and print their tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench import api_latency, cli_start, db_busy, egress, gateway, instant, mcp_latency, soak, vm_boot, workspaces

BENCHMARKS: dict[str, Callable[[argparse.Namespace], int | None]] = {
    "api": lambda _: api_latency.run(),
    "cli": lambda _: cli_start.run(),
    "db": lambda _: db_busy.run(),
    "vm": lambda _: vm_boot.run(),
    "workspaces": lambda _: workspaces.run(),
    "instant": lambda _: instant.run(),
    "mcp": mcp_latency.run,
    "gateway": gateway.run,
    "egress": egress.run,
    "soak": soak.run,
}
ON_REQUEST = {"soak"}  # long (many VM boots while nexusd is killed), so only when named


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all but soak)"
    )
    soak.add_arguments(parser)
    mcp_latency.add_arguments(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    status = 0
    for name in args.names or [n for n in BENCHMARKS if n not in ON_REQUEST]:
        status = max(status, BENCHMARKS[name](args) or 0)
    sys.exit(status)


if __name__ == "__main__":
    main()
