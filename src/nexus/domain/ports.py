"""Ports: what the services need from the outside world, as Protocols. Adapters implement them."""

from __future__ import annotations

from typing import Protocol

from nexus.domain.models import Vm


class VmmDriver(Protocol):
    """A virtual machine monitor (QEMU, Firecracker). The rest of Nexus cannot tell them apart."""

    @property
    def name(self) -> str: ...

    async def start(self, vm: Vm) -> None:
        """Launch the VMM for ``vm``; return once its process runs. Raise DriverError on failure."""
        ...

    async def stop(self, vm: Vm, timeout_s: float) -> None:
        """Power the VM off gracefully, killing the VMM after ``timeout_s``."""
        ...
