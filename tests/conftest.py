from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, start_daemon


class _NoVsockSocket(socket.socket):
    def __init__(self, family: int = -1, *args: object, **kwargs: object) -> None:
        if family == socket.AF_VSOCK:
            raise AssertionError("tests must never open an AF_VSOCK socket on this machine")
        super().__init__(family, *args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_vsock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test in this process: an AF_VSOCK socket here would reach the outer hypervisor, so opening one fails."""
    monkeypatch.setattr(socket, "socket", _NoVsockSocket)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()
