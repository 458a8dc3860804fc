"""Following a long operation (pull, build, prepare) in the terminal: a progress bar on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from nexus.sdk.calls import OnProgress

stderr = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress(title: str, show: bool = True) -> Iterator[OnProgress]:
    """A bar drawn while the block runs (when ``show``); the block passes the yielded callback to the SDK."""
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

        def on_progress(stage: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=f"{title}: {stage}")

        yield on_progress
    if show:
        stderr.print(f"{title}: done")
