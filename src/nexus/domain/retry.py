"""The one way Nexus retries: call an async attempt until it succeeds, a condition gives up, or time runs out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    timeout_s: float,
    interval_s: float = 0.02,
    give_up: Callable[[], BaseException | None] = lambda: None,
) -> T:
    """Return ``attempt()``'s first result. Errors of ``retry_on`` are retried every ``interval_s`` until
    ``timeout_s`` has passed (then the last one is raised); ``give_up`` returning an exception ends it at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        stop = give_up()
        if stop is not None:
            raise stop
        try:
            return await attempt()
        except retry_on:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(interval_s)
