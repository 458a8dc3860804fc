"""Following an NDJSON operation (pull, build, exec) in the terminal: a progress bar on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from nexus.domain import NexusError

stderr = Console(stderr=True, highlight=False)


def follow(events: Iterator[dict[str, Any]], title: str, show: bool = True) -> Any:
    """Consume progress events, drawing a bar when ``show``; return the final result."""
    result: Any = None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=stderr,
        disable=not show,
        transient=True,
    ) as bar:
        task = bar.add_task(title, total=1.0)
        for event in events:
            if event.get("event") == "progress":
                bar.update(
                    task, completed=float(event.get("fraction", 0.0)), description=f"{title}: {event.get('stage', '')}"
                )
            elif event.get("event") == "result":
                result = event.get("result")
    if result is None:
        raise NexusError(f"{title}: the daemon ended the operation without a result")
    if show:
        stderr.print(f"{title}: done")
    return result
