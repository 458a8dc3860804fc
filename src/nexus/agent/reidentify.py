"""``nexus/identity``: make the guest the machine nexusd says it is, now (see ``nexus.protocol.identity``).

The clock is set when it is more than ``SKEW_S`` off (a guest resumed from a checkpoint wakes with the time it was
saved at), the host name when it differs (also written to /etc/hostname), the machine id when given (a fork must
not share its parent's), and the seed is mixed into the kernel's random pool (a fork must not replay its parent's
random numbers; writing to /dev/urandom mixes without crediting entropy, which is all that is needed here), and the
NIC is given the VM's MAC and address when it has others (a fork wakes with its parent's; ``ip``, or BusyBox's).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from nexus.protocol import INTERNAL_ERROR, INVALID_PARAMS, GuestNet, Identity, JsonRpcError

__all__ = ["SKEW_S", "apply_identity"]

SKEW_S = 0.5
SYS_NET = Path("/sys/class/net")
_SIOCGIFADDR = 0x8915
_SIOCGIFNETMASK = 0x891B


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.nexus")
    tmp.write_text(text)
    tmp.replace(path)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _ipv4(nic: str, request: int) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            ifreq = fcntl.ioctl(sock.fileno(), request, struct.pack("256s", nic.encode()[:15]))
        except OSError:  # no address
            return None
    return socket.inet_ntoa(ifreq[20:24])


def _address(nic: str) -> str | None:
    """``A.B.C.D/P`` of the NIC's first IPv4 address, or None."""
    addr, mask = _ipv4(nic, _SIOCGIFADDR), _ipv4(nic, _SIOCGIFNETMASK)
    if addr is None or mask is None:
        return None
    return f"{addr}/{bin(int.from_bytes(socket.inet_aton(mask), 'big')).count('1')}"


def _ip() -> list[str]:
    found = shutil.which("ip")
    if found:
        return [found]
    busybox = shutil.which("busybox")
    if busybox:
        return [busybox, "ip"]
    raise JsonRpcError(INTERNAL_ERROR, "neither ip nor busybox is installed: cannot configure the NIC")


def _apply_net(net: GuestNet, sys_net: Path = SYS_NET) -> str | None:
    """Give the guest's NIC the lease's MAC and address unless it has them; the NIC's name when it changed."""
    nics = sorted(d.name for d in sys_net.iterdir() if (d / "device").exists())
    if not nics:
        return None
    macs = {nic: _read(sys_net / nic / "address") for nic in nics}
    nic = next((n for n in nics if macs[n] == net.mac), nics[0])
    if macs[nic] == net.mac and _address(nic) == net.address:
        return None
    ip = _ip()
    for args in (
        ("link", "set", "dev", nic, "down"),
        ("link", "set", "dev", nic, "address", net.mac),
        ("link", "set", "dev", nic, "up"),
        ("addr", "flush", "dev", nic),
        ("addr", "add", net.address, "dev", nic),
        ("route", "add", "default", "via", net.gateway, "dev", nic),
    ):
        done = subprocess.run([*ip, *args], capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise JsonRpcError(INTERNAL_ERROR, f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return nic


def apply_identity(params: Any, root: Path = Path("/")) -> dict[str, Any]:
    try:
        ident = Identity.from_params(params)
    except ValueError as exc:
        raise JsonRpcError(INVALID_PARAMS, str(exc)) from exc
    done: dict[str, Any] = {"clock_skew_s": None, "hostname": None, "machine_id": False, "seeded": False, "net": None}
    skew = ident.epoch - time.time()
    if abs(skew) > SKEW_S:
        time.clock_settime(time.CLOCK_REALTIME, ident.epoch)
        done["clock_skew_s"] = round(skew, 3)
    if ident.hostname != socket.gethostname():
        socket.sethostname(ident.hostname)
        with contextlib.suppress(OSError):  # a read-only root still gets the name
            _write(root / "etc/hostname", ident.hostname + "\n")
        done["hostname"] = ident.hostname
    machine_id = root / "etc/machine-id"
    if ident.machine_id is not None and _read(machine_id) != ident.machine_id:
        _write(machine_id, ident.machine_id + "\n")
        done["machine_id"] = True
    if ident.seed:
        with open("/dev/urandom", "wb") as pool:
            pool.write(bytes.fromhex(ident.seed))
        done["seeded"] = True
    if ident.net is not None:
        done["net"] = _apply_net(ident.net)
    return done
