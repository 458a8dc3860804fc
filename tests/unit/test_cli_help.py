"""Every nexusctl command's --help renders (help texts are Rich markup: a stray "[...]" breaks them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer

from nexus.cli.main import app, main


def _paths(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, sub in getattr(command, "commands", {}).items():  # a group (typer vendors its own click)
        yield from _paths(sub, (*prefix, name))


PATHS = list(_paths(typer.main.get_command(app)))


def test_every_command_is_listed() -> None:
    assert ("vm", "create") in PATHS and ("drive", "attach") in PATHS and ("admin", "cleanup-network") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "nexusctl")
def test_help_renders(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: nexusctl" in out
