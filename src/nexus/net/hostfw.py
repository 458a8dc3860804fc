"""``nexusctl setup-firewall``: let the host forward the VMs' traffic.

Enables IPv4 forwarding (``/proc/sys/net/ipv4/ip_forward``, in the current network namespace, not persisted
across reboots) and, where a firewall manager is active, allows forwarding through the bridge: ufw gets
``route allow`` rules in and out on it, firewalld puts it in the ``trusted`` zone. Their argv come from pure
builders; ufw and firewall-cmd are the only interface those tools offer, so they are run as child processes
(nftables itself is never driven this way). Each step's outcome is returned as a sentence for the user.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from nexus.domain import DriverError

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
TOOL_TIMEOUT_S = 60


def ufw_argvs(bridge: str) -> list[list[str]]:
    return [["ufw", "route", "allow", "in", "on", bridge], ["ufw", "route", "allow", "out", "on", bridge]]


def firewalld_argvs(bridge: str) -> list[list[str]]:
    return [
        ["firewall-cmd", "--permanent", "--zone=trusted", f"--add-interface={bridge}"],
        ["firewall-cmd", "--reload"],
    ]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"{argv[0]} failed: {exc}") from exc


def _active_manager() -> str | None:
    if shutil.which("ufw") and "Status: active" in _run(["ufw", "status"]).stdout:
        return "ufw"
    if shutil.which("firewall-cmd") and _run(["firewall-cmd", "--state"]).stdout.strip() == "running":
        return "firewalld"
    return None


def ip_forward_enabled(path: Path = IP_FORWARD) -> bool:
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return False


def enable_ip_forward(path: Path = IP_FORWARD) -> bool:
    """Turn IPv4 forwarding on; True when it was off."""
    try:
        if path.read_text().strip() == "1":
            return False
        path.write_text("1\n")
    except OSError as exc:
        raise DriverError(f"cannot enable IPv4 forwarding in {path}: {exc.strerror or exc}") from exc
    return True


def setup_host(bridge: str, ip_forward: Path = IP_FORWARD) -> list[str]:
    """Do every step; the list of what was done or found, one sentence each."""
    said = []
    if enable_ip_forward(ip_forward):
        said.append(
            "enabled IPv4 forwarding (net.ipv4.ip_forward=1; add it to /etc/sysctl.d to keep it after a reboot)"
        )
    else:
        said.append("IPv4 forwarding was already enabled")
    manager = _active_manager()
    argvs = {"ufw": ufw_argvs, "firewalld": firewalld_argvs}[manager](bridge) if manager else []
    for argv in argvs:
        done = _run(argv)
        if done.returncode != 0:
            raise DriverError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
    if manager:
        said.append(f"{manager}: allowed forwarding through {bridge} ({'; '.join(' '.join(a) for a in argvs)})")
    else:
        said.append("no active ufw or firewalld: nothing else to allow")
    return said
