"""What every client of nexusd shares: error bodies ``{"error": {"code", "message"}}`` rebuilt as the matching
``NexusError`` subclass (so callers handle one error tree whichever side of the socket raised it), the error for a
nexusd that does not answer, and the check that a reference is one URL path segment."""

from __future__ import annotations

import json

import httpx

from nexus.domain import ERRORS_BY_CODE, Invalid, NexusError


class DaemonUnreachable(NexusError):
    """nexusd did not answer: not running, wrong socket, or no permission."""

    code = "unreachable"


class Unauthorized(NexusError):
    code = "unauthorized"


_EDGE_ERRORS: dict[str, type[NexusError]] = {
    "unauthorized": Unauthorized,
    "bad_request": Invalid,
}


def error_from_response(response: httpx.Response) -> NexusError:
    return error_from_body(response.status_code, response.content)


def error_from_body(status: int, body: bytes) -> NexusError:
    """The error an answer's body describes (any answer: an HTTP response, a WebSocket handshake's refusal)."""
    try:
        detail = json.loads(body)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        return NexusError(f"HTTP {status}: {body[:200].decode('utf-8', errors='replace')}")
    cls = ERRORS_BY_CODE.get(code) or _EDGE_ERRORS.get(code) or NexusError
    return cls(message)


def unreachable(where: str, exc: Exception) -> DaemonUnreachable:
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return DaemonUnreachable(
            f"nexusd at {where} has a TLS certificate this client does not trust ({exc}); "
            "give the CA that signed it with --ca-file (or $NEXUS_CA_FILE)"
        )
    return DaemonUnreachable(f"cannot reach nexusd at {where}: {exc}")


def segment(value: str) -> str:
    """One URL path segment: a ref with '/' or '?' must not reach another route."""
    if not value or value in (".", "..") or any(c in value for c in "/?#%"):
        raise Invalid(f"invalid reference {value!r}")
    return value
