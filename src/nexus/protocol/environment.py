"""``nexus/environment`` (control port, host → agent): variables for everything the agent runs from now on, and a
CA for the guest to trust. nexusd sends it each time a VM becomes ready: its egress proxy (``http_proxy``...) and
the placeholders of the secrets bound to it (``NAME=nexus-secret:NAME``), and the Nexus egress CA.

params: ``{"set": {NAME: VALUE, ...}, "ca_pem": "-----BEGIN CERTIFICATE-----..." | null}``; result:
``{"set": [NAME, ...], "ca_bundle": PATH | null}``. The agent also writes the variables to
``/etc/profile.d/nexus.sh`` for login shells. Standard library only (the agent imports it).
"""

from __future__ import annotations

from typing import Final

__all__ = ["CA_BUNDLE", "CA_FILE", "ENVIRONMENT_METHOD", "PROFILE_SCRIPT"]

ENVIRONMENT_METHOD: Final = "nexus/environment"
CA_FILE: Final = "/usr/local/share/ca-certificates/nexus-egress.crt"  # where update-ca-certificates looks
CA_BUNDLE: Final = "/etc/nexus/ca-bundle.pem"  # the system's CAs and the Nexus CA, for SSL_CERT_FILE
PROFILE_SCRIPT: Final = "/etc/profile.d/nexus.sh"
