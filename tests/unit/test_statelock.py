"""One nexusd per state dir: the second holder is refused with one line naming the first, touching nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nexus.daemon.statelock import LOCK_FILE, state_dir_lock
from nexus.domain import Unavailable


def test_second_holder_is_refused_and_the_first_keeps_it(tmp_path: Path) -> None:
    with state_dir_lock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        refused = rf"another nexusd \(pid {os.getpid()}\) is using the state dir"
        with pytest.raises(Unavailable, match=refused), state_dir_lock(tmp_path):
            pass
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with state_dir_lock(tmp_path):  # released with its holder
        pass
