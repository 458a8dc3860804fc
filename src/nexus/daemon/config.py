"""nexusd configuration: defaults, overlaid by a TOML file, overlaid by command-line flags."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from nexus.daemon.credentials import read_private_text
from nexus.domain import Invalid, Layout
from nexus.mcp.origin import OriginPolicy
from nexus.services import RuntimeTimeouts
from nexus.vmm.firecracker.jailer import DEFAULT_CHROOT_BASE, JailerOptions, parse_cgroup_setting

DEFAULT_CONFIG_FILE = Path("/etc/nexus/nexusd.toml")


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path = Path("/var/lib/nexus")
    runtime_dir: Path = Path("/run/nexus")
    socket: Path = Path("/run/nexus/nexusd.sock")
    socket_mode: int = 0o660
    listen: str | None = None  # HOST:PORT for an optional TCP listener (needs token_file)
    token_file: Path | None = None
    log_level: str = "info"
    boot_timeout_s: float = 90.0  # start -> agent hello; past it the VM fails with its console tail
    heartbeat_timeout_s: float = 6.0  # a ready VM whose agent is silent this long is unreachable
    stop_timeout_s: float = 15.0  # graceful power-off before the VMM is killed
    firecracker_binary: Path | None = None  # else PATH, else the newest `nexusctl firecracker pull`
    jailer_binary: Path | None = None  # set: every Firecracker runs through this jailer
    jailer_uid: int | None = None
    jailer_gid: int | None = None
    jailer_chroot_base: Path = DEFAULT_CHROOT_BASE  # on the state dir's filesystem: drives are hard-linked in
    jailer_cgroups: tuple[str, ...] = ()  # "memory.max=1G"...: each Firecracker in a cgroup of its own
    jailer_cgroup_version: int = 2  # the host's cgroup hierarchy for jailer_cgroups (1 or 2)
    jailer_parent_cgroup: str | None = None  # where those cgroups go (default: the firecracker file's name)
    jailer_new_pid_ns: bool = False  # each Firecracker as pid 1 of a PID namespace of its own
    network: bool = True  # VMs get a NIC on nexusd's bridge by default; false: no bridge, TAP or rule is made
    ip_forward: bool = True  # turn IPv4 forwarding on when a VM needs a way out; false: the operator decides
    stop_vms_on_exit: bool = False  # on SIGTERM/SIGINT power VMs off; by default they run on (live restore)
    tls_cert: Path | None = None  # with tls_key: the TCP listener speaks TLS (PEM certificate with its chain)
    tls_key: Path | None = None
    mcp_allowed_hosts: tuple[str, ...] = ()  # Host names the MCP endpoints answer besides loopback and the listener's
    mcp_allowed_origins: tuple[str, ...] = ()  # browser Origins (scheme://host[:port]) allowed besides loopback
    mcp_session_idle_timeout_s: float = 30 * 60.0  # an MCP session unused this long is closed (clients re-initialize)
    egress_proxy_port: int = 3128  # nexusd's egress proxy, on the bridge's gateway address (0: no proxy)
    egress_ca_file: Path | None = None  # CAs the proxy trusts upstream besides the system's (a private registry)

    @property
    def layout(self) -> Layout:
        return Layout(state_dir=self.state_dir, runtime_dir=self.runtime_dir)

    @property
    def timeouts(self) -> RuntimeTimeouts:
        return RuntimeTimeouts(
            boot_s=self.boot_timeout_s, heartbeat_s=self.heartbeat_timeout_s, stop_s=self.stop_timeout_s
        )

    def jailer(self) -> JailerOptions | None:
        """The jailer settings, or None when Firecracker runs directly."""
        if self.jailer_binary is None:
            given = [k for k in _JAILER_KEYS if getattr(self, k) != getattr(_DEFAULTS, k)]
            if given:
                raise Invalid(f"{', '.join(given)} only apply with jailer_binary")
            return None
        if self.jailer_uid is None or self.jailer_gid is None:
            raise Invalid("jailer_binary needs jailer_uid and jailer_gid: the unprivileged ids Firecracker runs as")
        return JailerOptions(
            self.jailer_binary,
            self.jailer_uid,
            self.jailer_gid,
            self.jailer_chroot_base,
            cgroup_version=self.jailer_cgroup_version,
            cgroups=tuple(parse_cgroup_setting(c) for c in self.jailer_cgroups),
            parent_cgroup=self.jailer_parent_cgroup,
            new_pid_ns=self.jailer_new_pid_ns,
        )

    def tcp_address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise Invalid(f"--listen wants HOST:PORT, got {self.listen!r}")
        return host.strip("[]"), int(port)

    def read_token(self) -> str | None:
        """The bearer token for the TCP listener, or None without one. A listener without a token is refused."""
        if self.listen is None:
            return None
        if self.token_file is None:
            raise Invalid("a TCP listener (--listen) needs --token-file: requests without the token get 401")
        token = read_private_text(self.token_file, "token file").strip()
        if len(token) < 16:
            raise Invalid(f"token in {self.token_file} is shorter than 16 characters")
        return token

    def origin_policy(self) -> OriginPolicy:
        """The MCP endpoints' Host/Origin policy: loopback, the TCP listener's own host, and what is configured."""
        address = self.tcp_address()
        listener = () if address is None or address[0] in ("0.0.0.0", "::") else (address[0],)
        hosts = [f"[{h}]" if ":" in h else h for h in (*listener, *self.mcp_allowed_hosts)]
        return OriginPolicy.build(hosts, self.mcp_allowed_origins)

    def tls_files(self) -> tuple[Path, Path] | None:
        """(certificate, key) for the TCP listener, or None for plain HTTP."""
        if self.tls_cert is None and self.tls_key is None:
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise Invalid("TLS needs both tls_cert and tls_key (--tls-cert, --tls-key)")
        if self.listen is None:
            raise Invalid("tls_cert and tls_key apply to the TCP listener: give --listen too")
        return self.tls_cert, self.tls_key


_PATH_KEYS = {
    "state_dir",
    "runtime_dir",
    "socket",
    "token_file",
    "firecracker_binary",
    "jailer_binary",
    "jailer_chroot_base",
    "tls_cert",
    "tls_key",
    "egress_ca_file",
}
_ID_KEYS = {"jailer_uid", "jailer_gid", "egress_proxy_port", "jailer_cgroup_version"}
_BOOL_KEYS = {"network", "ip_forward", "stop_vms_on_exit", "jailer_new_pid_ns"}
_LIST_KEYS = {"mcp_allowed_hosts", "mcp_allowed_origins", "jailer_cgroups"}
_STR_KEYS = {"jailer_parent_cgroup"}
_JAILER_KEYS = (
    "jailer_uid",
    "jailer_gid",
    "jailer_cgroups",
    "jailer_cgroup_version",
    "jailer_parent_cgroup",
    "jailer_new_pid_ns",
)


_DEFAULTS = Config()


def load(path: Path | None, overrides: dict[str, object]) -> Config:
    """Defaults < config file < ``overrides`` (flags given on the command line; None means not given).

    A missing default config file is fine; a missing file named explicitly is an error.
    """
    values: dict[str, object] = {}
    file = path or DEFAULT_CONFIG_FILE
    if path is not None or file.exists():
        try:
            with file.open("rb") as fh:
                values.update(tomllib.load(fh))
        except OSError as exc:
            raise Invalid(f"cannot read config {file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise Invalid(f"config {file} is not valid TOML: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise Invalid(f"unknown config keys: {', '.join(unknown)}")
    typed: dict[str, object] = {}
    for key, value in values.items():
        if key in _PATH_KEYS:
            typed[key] = Path(str(value))
        elif key == "socket_mode":
            typed[key] = int(str(value), 8) if isinstance(value, str) else value
        elif key in _ID_KEYS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Invalid(f"{key} must be a non-negative integer, got {value!r}")
            typed[key] = value
        elif key.endswith("_timeout_s"):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise Invalid(f"{key} must be a positive number of seconds, got {value!r}")
            typed[key] = float(value)
        elif key in _LIST_KEYS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise Invalid(f"{key} must be a list of non-empty strings, got {value!r}")
            typed[key] = tuple(value)
        elif key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise Invalid(f"{key} must be true or false, got {value!r}")
            typed[key] = value
        elif key in _STR_KEYS:
            if not isinstance(value, str) or not value:
                raise Invalid(f"{key} must be a non-empty string, got {value!r}")
            typed[key] = value
        else:
            typed[key] = value
    return replace(Config(), **typed)  # type: ignore[arg-type]
