"""The ONE table from errors to nexusctl exit codes."""

from __future__ import annotations

from nexus.client import DaemonUnreachable
from nexus.domain import Conflict, Invalid, NexusError, NotFound

OK = 0
ERROR = 1
USAGE = 2
UNREACHABLE = 3
NOT_FOUND = 4
CONFLICT = 5

EXIT_BY_ERROR: dict[type[NexusError], int] = {
    DaemonUnreachable: UNREACHABLE,
    NotFound: NOT_FOUND,
    Conflict: CONFLICT,  # includes InvalidState
    Invalid: USAGE,
}


def exit_code_for(exc: NexusError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_BY_ERROR:
            return EXIT_BY_ERROR[cls]
    return ERROR
