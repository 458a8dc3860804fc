"""``nexus/identity``: make the guest the machine nexusd says it is, now (see ``nexus.protocol.identity``).

The clock is set when it is more than ``SKEW_S`` off (a guest resumed from a checkpoint wakes with the time it was
saved at), the host name when it differs (also written to /etc/hostname), the machine id when given (a fork must
not share its parent's), and the seed is mixed into the kernel's random pool (a fork must not replay its parent's
random numbers; writing to /dev/urandom mixes without crediting entropy, which is all that is needed here).
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

from nexus.protocol import INVALID_PARAMS, Identity, JsonRpcError

__all__ = ["SKEW_S", "apply_identity"]

SKEW_S = 0.5


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.nexus")
    tmp.write_text(text)
    tmp.replace(path)


def apply_identity(params: Any, root: Path = Path("/")) -> dict[str, Any]:
    try:
        ident = Identity.from_params(params)
    except ValueError as exc:
        raise JsonRpcError(INVALID_PARAMS, str(exc)) from exc
    done: dict[str, Any] = {"clock_skew_s": None, "hostname": None, "machine_id": False, "seeded": False}
    skew = ident.epoch - time.time()
    if abs(skew) > SKEW_S:
        time.clock_settime(time.CLOCK_REALTIME, ident.epoch)
        done["clock_skew_s"] = round(skew, 3)
    if ident.hostname != socket.gethostname():
        socket.sethostname(ident.hostname)
        with contextlib.suppress(OSError):  # a read-only root still gets the name
            _write(root / "etc/hostname", ident.hostname + "\n")
        done["hostname"] = ident.hostname
    if ident.machine_id is not None:
        _write(root / "etc/machine-id", ident.machine_id + "\n")
        done["machine_id"] = True
    if ident.seed:
        with open("/dev/urandom", "wb") as pool:
            pool.write(bytes.fromhex(ident.seed))
        done["seeded"] = True
    return done
