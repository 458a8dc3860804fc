"""Reading nexusd's credentials from disk: the TCP listener's token file, and its TLS certificate and key.

A token file that anyone but nexusd's own user (or root) could read or change is refused at start, with the fix in
one line: a token other local users can read is a key to every VM. (A TLS key is left to the host's conventions,
such as Debian's ``ssl-cert`` group.) This module reads and checks; it serves nothing.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from nexus.domain import Invalid


def read_private_text(path: Path, what: str) -> str:
    """The text of ``path``, refused unless it is a regular file owned by root or this process's user and readable
    by nobody else. The checks are made on the opened file, so a swap between check and read changes nothing."""
    try:
        with path.open("rb") as fh:
            info = os.fstat(fh.fileno())
            check_private(path, what, info)
            data = fh.read()
    except OSError as exc:
        raise Invalid(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(f"{what} {path} is not UTF-8 text") from exc


def check_private(path: Path, what: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise Invalid(f"{what} {path} is not a regular file")
    me = os.geteuid()
    if info.st_uid not in (0, me):
        owner = f"uid {info.st_uid}, not root or nexusd's uid {me}"
        raise Invalid(f"{what} {path} belongs to {owner}: chown {me} {path} && chmod 600 {path}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise Invalid(f"{what} {path} is open to group or others (mode {mode:04o}): chmod 600 {path}")


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server-side TLS settings of the TCP listener: TLS 1.2 or newer, ``cert`` (PEM, with its chain) and its
    ``key``. Loaded before anything is bound, so a bad pair stops nexusd with one line instead of at first use."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise Invalid(f"cannot use TLS certificate {cert} with key {key}: {exc}") from exc
    return context
