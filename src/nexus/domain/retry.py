"""The ways Nexus retries: :func:`retry` calls an async attempt until it succeeds, a condition gives up, or time
runs out (waiting for something that is coming up); :class:`Backoff` spaces the attempts of a loop that reopens a
link for as long as its owner lives (reconnecting to something that went away)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class Backoff:
    """Capped exponential delays with jitter: the n-th consecutive failure waits a uniform draw from
    [1/2, 1] * min(max_s, initial_s * factor**n). The jitter keeps links that broke together (a daemon-wide hiccup)
    from reconnecting in lockstep; ``reset()`` after a success starts again from ``initial_s``."""

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay_s(self) -> float:
        ceiling = min(self.max_s, self.initial_s * self.factor**self.failures)
        self.failures += 1
        return ceiling * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self.failures = 0

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay_s())
