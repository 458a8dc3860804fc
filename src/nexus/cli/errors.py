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


# Errors name the API's fields (REST and MCP clients get them too); a nexusctl user typed flags, so these phrases are
# said in the flags' words. Exact phrases only: a message that matches none is printed as it came.
CLI_WORDS: tuple[tuple[str, str], ...] = (
    (
        "publish needs the VM on the network: leave network unset or true",
        "--publish needs the VM on the network: drop --no-network",
    ),
    ("create the VM with network=false", "create the VM with --no-network"),
    ("publish wants HOSTPORT:GUESTPORT", "--publish wants HOSTPORT:GUESTPORT"),
    ("sha256 must be 64 hex digits", "--sha256 must be 64 hex digits"),
    ("needs its sha256", "needs its --sha256"),
    (
        "sha256 checks a downloaded release; a binary registered by its path",
        "--sha256 checks a downloaded release; a binary registered by --path",
    ),
)


def in_cli_words(message: str) -> str:
    for api_words, cli_words in CLI_WORDS:
        message = message.replace(api_words, cli_words)
    return message


def exit_code_for(exc: NexusError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_BY_ERROR:
            return EXIT_BY_ERROR[cls]
    return ERROR
