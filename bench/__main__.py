"""``python -m bench [NAME ...]``: run benchmarks (all by default) and print their tables."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bench import api_latency, vm_boot, workspaces

BENCHMARKS: dict[str, Callable[[], None]] = {
    "api": api_latency.run,
    "vm": vm_boot.run,
    "workspaces": workspaces.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)"
    )
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in args.names or BENCHMARKS:
        BENCHMARKS[name]()


if __name__ == "__main__":
    main()
