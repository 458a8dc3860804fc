"""The argv for running ``firecracker`` directly (no jailer). Pure: values in, ``list[str]`` out.

The microVM itself is configured over the API socket (:mod:`nexus.vmm.firecracker.api`), not on the command
line; the argv only names the socket, the instance id and, optionally, the early log level. See
:mod:`nexus.vmm.firecracker.jailer` for the jailed variant, which shares :func:`firecracker_args`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePath

from nexus.domain.errors import Invalid
from nexus.vmm.firecracker.config import LogLevel

FIRECRACKER_BINARY = "firecracker"
_INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")  # Firecracker's and the jailer's instance id rule


def check_instance_id(vm_id: str) -> str:
    """Return ``vm_id`` if Firecracker and the jailer accept it (1-64 letters, digits or hyphens)."""
    if not _INSTANCE_ID_RE.match(vm_id):
        raise Invalid(f"instance id {vm_id!r} must be 1-64 letters, digits or hyphens")
    return vm_id


def firecracker_args(
    api_sock: PurePath | None, *, level: LogLevel | None = None, extra: Iterable[str] = ()
) -> list[str]:
    """The options both launch modes pass to firecracker (the jailer adds ``--id`` itself)."""
    args = [] if api_sock is None else ["--api-sock", str(api_sock)]
    if level is not None:
        args += ["--level", level.value]
    args += list(extra)
    return args


def firecracker_argv(
    *,
    api_sock: PurePath,
    vm_id: str,
    binary: str | PurePath = FIRECRACKER_BINARY,
    level: LogLevel | None = None,
    extra: Iterable[str] = (),
) -> list[str]:
    """``firecracker --api-sock PATH --id ID [--level LEVEL] [extra...]``."""
    check_instance_id(vm_id)
    return [str(binary), "--api-sock", str(api_sock), "--id", vm_id, *firecracker_args(None, level=level, extra=extra)]
