"""The reconnect backoff: exponential, capped, jittered, reset after a success."""

from __future__ import annotations

import random

from nexus.domain.retry import Backoff


def test_delays_grow_then_cap_within_the_jitter_band() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, rng=random.Random(7))
    delays = [backoff.next_delay_s() for _ in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay_s() <= 0.1


def test_jitter_spreads_links_that_broke_together() -> None:
    firsts = {round(Backoff(rng=random.Random(seed)).next_delay_s(), 6) for seed in range(20)}
    assert len(firsts) > 10
