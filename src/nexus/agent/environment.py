"""``nexus/environment``: set variables for everything the agent runs from now on, and trust a CA.

The variables go into the agent's own environment (run_command and every process it starts inherit it) and into a
profile script for login shells. A CA is installed where the distribution's tools look
(``update-ca-certificates`` is run when present) and into a bundle of the system's CAs plus it, which
``SSL_CERT_FILE`` and friends point at, so clients that read only one file (Python, curl, requests, Node's
extra-CA variable) trust both the real servers and nexusd's egress proxy.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from nexus.protocol import CA_BUNDLE, CA_FILE, INVALID_PARAMS, PROFILE_SCRIPT, JsonRpcError

__all__ = ["apply_environment"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
SYSTEM_BUNDLES = ("etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt", "etc/ssl/cert.pem")
_MAX_VALUE = 64 * 1024


def _variables(params: dict[str, Any]) -> dict[str, str]:
    given = params.get("set", {})
    if not isinstance(given, dict):
        raise JsonRpcError(INVALID_PARAMS, "set must be an object of NAME: VALUE")
    for name, value in given.items():
        if not _NAME.fullmatch(name) or not isinstance(value, str) or len(value) > _MAX_VALUE or "\0" in value:
            raise JsonRpcError(INVALID_PARAMS, f"bad variable {name!r}: a name, and a string value")
    return dict(given)


def _install_ca(pem: str, root: Path) -> dict[str, str]:
    """Install ``pem``; the variables that point clients at it."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise JsonRpcError(INVALID_PARAMS, "ca_pem is not a PEM certificate")
    ca_file = root / CA_FILE.lstrip("/")
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    ca_file.write_text(pem)
    if root == Path("/"):  # Debian-likes: the system store itself then trusts it too (absent in minimal images)
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["update-ca-certificates"], capture_output=True, timeout=60, check=False)
    system = next((root / b for b in SYSTEM_BUNDLES if (root / b).is_file()), None)
    existing = system.read_text(errors="replace") if system is not None else ""
    bundle = root / CA_BUNDLE.lstrip("/")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    if pem.strip() not in existing:
        existing = existing.rstrip("\n") + ("\n" if existing else "") + pem
    tmp = bundle.with_suffix(".tmp")
    tmp.write_text(existing)
    os.replace(tmp, bundle)
    return {
        "SSL_CERT_FILE": CA_BUNDLE,
        "REQUESTS_CA_BUNDLE": CA_BUNDLE,
        "CURL_CA_BUNDLE": CA_BUNDLE,
        "NODE_EXTRA_CA_CERTS": CA_FILE,
    }


def apply_environment(params: Any, root: Path = Path("/")) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise JsonRpcError(INVALID_PARAMS, "params must be an object")
    variables = _variables(params)
    pem = params.get("ca_pem")
    if pem is not None:
        if not isinstance(pem, str):
            raise JsonRpcError(INVALID_PARAMS, "ca_pem must be a string")
        variables.update(_install_ca(pem, root))
    os.environ.update(variables)
    profile = root / PROFILE_SCRIPT.lstrip("/")
    profile.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(variables.items())]
    profile.write_text("# written by the Nexus agent (nexus/environment)\n" + "\n".join(lines) + "\n")
    return {"set": sorted(variables), "ca_bundle": CA_BUNDLE if pem is not None else None}
