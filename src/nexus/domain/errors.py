"""The one error tree of Nexus. Every edge (HTTP, MCP, CLI) maps these exactly once.

Each class carries a stable wire `code`; lower-level errors are wrapped with ``raise ... from exc``.
"""

from __future__ import annotations


class NexusError(Exception):
    """Base of every error Nexus raises on purpose."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(NexusError):
    code = "not_found"


class Conflict(NexusError):
    code = "conflict"


class InvalidState(Conflict):
    """The operation is not allowed in the VM's current state."""

    code = "invalid_state"


class Invalid(NexusError):
    """Bad input: nothing was changed."""

    code = "invalid"


class TooLarge(Invalid):
    """Bad input that is too big (a secret's value over its limit): nothing was changed. Its code is the one the
    HTTP edge already answers a too-large request body with, so a client sees one code for every 413."""

    code = "payload_too_large"


class Unavailable(NexusError):
    """A needed capability (driver, asset, daemon) is not there right now."""

    code = "unavailable"


class DriverError(NexusError):
    """The VMM (QEMU, Firecracker) failed to do what was asked."""

    code = "driver_error"


class GuestError(NexusError):
    """A tool inside the guest ran and refused or failed (missing file, bad path...): its own message."""

    code = "guest_error"


class Forbidden(NexusError):
    """The caller may not do this (an agent token outside its VM, a host path over TCP): nothing was done."""

    code = "forbidden"


ERRORS_BY_CODE: dict[str, type[NexusError]] = {
    cls.code: cls
    for cls in (
        NexusError,
        NotFound,
        Conflict,
        InvalidState,
        Invalid,
        TooLarge,
        Unavailable,
        DriverError,
        GuestError,
        Forbidden,
    )
}
