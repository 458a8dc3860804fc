"""VM networking end to end, inside two network namespaces this module creates and removes.

``nx-host-*`` runs nexusd (started through ``ip netns exec``, so nexusd itself just uses its current
namespace) and the QEMU VMs; its only uplink is a veth to ``nx-inet-*``, which plays "the internet" with an
HTTP server that answers with the client's address. Addresses are from TEST-NET-3 and the nexus subnet, all
inside the two namespaces; the guests' DNS server is set to the "internet" namespace too, so nothing is ever
sent anywhere else. IPv4 forwarding starts off in nx-host: ``nexusctl setup-firewall`` turns it on, and, turned
off again, nexusd turns it on by itself at the first VM start.

Two VMs are booted once for the module: A publishes 18080:8000 and runs a web server, B has no ports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nexus.domain import Layout
from nexus.domain.egress import placeholder
from nexus.services import SettingsService
from nexus.store import SettingsRepo, open_database
from tests.api_client import NexusClient
from tests.e2e.conftest import linked_state
from tests.helpers import Daemon, start_daemon, wait_until
from tests.tls import make_test_ca

pytestmark = pytest.mark.vm

INET_ADDR, UPLINK_ADDR = "203.0.113.1", "203.0.113.2"
INET_PORT, HOST_PORT, GUEST_PORT = 8080, 18080, 8000
NEXUSCTL = str(Path(sys.executable).parent / "nexusctl")

# The "internet": answers every GET with the address the connection came from.
ECHO_SERVER = f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.client_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("{INET_ADDR}", {INET_PORT}), H).serve_forever()
"""

# The "internet"'s HTTPS side (api.test, other.test, blocked.test, all INET_ADDR): answers every GET with the sha256
# of each request header's value, so a test sees what the egress proxy sent on and the guest never gets a secret
# back in the answer.
TLS_PORT = 443
TLS_SERVER = """
import hashlib, http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen = {k.lower(): hashlib.sha256(v.encode()).hexdigest() for k, v in self.headers.items()}
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(sys.argv[3], sys.argv[4])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""
TLS_HOSTS = ("api.test", "other.test", "blocked.test")
SECRET_VALUE = "sk-e2e-0123456789-real-value"


# Run inside a namespace: nexusd's table as libnftables lists it, rules without handles.
LIST_RULES = "import json; from nexus.net.nft import NftFirewall; from nexus.net.ruleset import rules_of; " + (
    "t = NftFirewall().listed(); print(json.dumps(None if t is None else rules_of(t)))"
)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
    return done


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


def fetch_in_ns(ns: str, url: str) -> str:
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode(), end='')"
    return in_ns(ns, sys.executable, "-c", code).stdout


@dataclass
class Lab:
    host: str
    inet: str
    base: Path
    state: Path
    daemon: Daemon | None
    root_ip_forward: str
    upstream_ca: Path | None = None  # the test CA, which nexusd's egress proxy trusts upstream

    def start_nexusd(self, keep_vms: bool = False) -> None:
        """``keep_vms``: its SIGTERM leaves the VMs running (else it stops them, so the module leaves none)."""
        config = self.base / "nexusd.toml"
        lines = ["boot_timeout_s = 90", "heartbeat_timeout_s = 6", "stop_timeout_s = 10"]
        if self.upstream_ca is not None:
            lines.append(f'egress_ca_file = "{self.upstream_ca}"')
        config.write_text("\n".join(lines) + "\n")
        self.daemon = start_daemon(
            self.base,
            "--config",
            str(config),
            state_dir=self.state,
            network=True,
            prefix=("ip", "netns", "exec", self.host),
            stop_vms_on_exit=not keep_vms,
        )

    @property
    def nexusd(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def nexusctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(NEXUSCTL, "--socket", str(self.nexusd.socket), *args, check=check)

    def api(self) -> NexusClient:
        return NexusClient(self.nexusd.socket, timeout_s=300)

    def rules(self) -> list[dict[str, Any]] | None:
        out = in_ns(self.host, sys.executable, "-c", LIST_RULES).stdout
        rules: list[dict[str, Any]] | None = json.loads(out)
        return rules

    def links(self) -> dict[str, dict[str, Any]]:
        return {link["ifname"]: link for link in json.loads(run("ip", "-n", self.host, "-j", "link", "show").stdout)}


def guest(api: NexusClient, vm: str, command: str | list[str], timeout_s: float = 60) -> dict[str, Any]:
    result = api.call_tool(vm, "run_command", {"command": command, "timeout_s": timeout_s})
    structured: dict[str, Any] = result["structuredContent"]
    return structured


def guest_python(api: NexusClient, vm: str, code: str) -> str:
    done = guest(api, vm, ["python3", "-c", code])
    assert done["exit_code"] == 0, done
    return str(done["stdout"])


def connect_from(api: NexusClient, vm: str, addr: str, port: int) -> str:
    """'connected' or 'blocked' (no answer within 3 s, or refused, or unreachable)."""
    code = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(3)\n"
        f"try:\n    s.connect(({addr!r}, {port})); print('connected', end='')\n"
        "except OSError:\n    print('blocked', end='')\n"
    )
    return guest_python(api, vm, code)


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is needed to make the test namespaces")
    request.getfixturevalue("e2e_daemon")  # the shared kernel and image exist once it is up
    suffix = secrets.token_hex(3)
    host, inet = f"nx-host-{suffix}", f"nx-inet-{suffix}"
    base = Path(tempfile.mkdtemp(prefix="nxnet"))  # short: Unix socket paths
    server: subprocess.Popen[bytes] | None = None
    tls: subprocess.Popen[bytes] | None = None
    lab: Lab | None = None
    etc = Path("/etc/netns") / host  # `ip netns exec` mounts its files over /etc: names for the "internet"
    root_ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    try:
        run("ip", "netns", "add", host)
        run("ip", "netns", "add", inet)
        # made inside the namespaces: the root namespace never holds these links, not even for a moment
        run("ip", "-n", host, "link", "add", "uplink", "type", "veth", "peer", "name", "wan", "netns", inet)
        run("ip", "-n", host, "addr", "add", f"{UPLINK_ADDR}/24", "dev", "uplink")
        run("ip", "-n", inet, "addr", "add", f"{INET_ADDR}/24", "dev", "wan")
        for ns, dev in ((host, "uplink"), (host, "lo"), (inet, "wan"), (inet, "lo")):
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", host, "route", "add", "default", "via", INET_ADDR)
        assert in_ns(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
        server = subprocess.Popen(["ip", "netns", "exec", inet, sys.executable, "-c", ECHO_SERVER])
        wait_until(lambda: fetch_in_ns(inet, f"http://{INET_ADDR}:{INET_PORT}/") == INET_ADDR, 20, "the echo server")
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{INET_ADDR} {' '.join(TLS_HOSTS)}\n")
        ca, cert, key = make_test_ca(base, TLS_HOSTS)
        tls_argv = [sys.executable, "-c", TLS_SERVER, INET_ADDR, str(TLS_PORT), str(cert), str(key)]
        tls = subprocess.Popen(["ip", "netns", "exec", inet, *tls_argv])

        state = linked_state(base, vmm="qemu")
        conn = open_database(state / "nexus.db")
        try:
            settings = SettingsService(SettingsRepo(conn))
            settings.set("dns_servers", [INET_ADDR])
        finally:
            conn.close()
        lab = Lab(host, inet, base, state, None, root_ip_forward, ca)
        lab.start_nexusd()
        yield lab
    finally:
        if lab is not None and lab.daemon is not None:
            if lab.daemon.proc.poll() is None:  # whatever a failed test left running goes, whichever daemon runs
                with contextlib.suppress(Exception), lab.api() as api:
                    for vm in api.list_vms():
                        api.remove_vm(vm["id"], force=True)
            code = lab.daemon.stop()
            if code != 0:
                print(lab.daemon.log_text()[-5000:])
        for process in (server, tls):
            if process is not None:
                process.kill()
                process.wait()
        shutil.rmtree(etc, ignore_errors=True)
        for ns in (host, inet):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class Vms:
    a: dict[str, Any]
    b: dict[str, Any]


@pytest.fixture(scope="module")
def vms(lab: Lab) -> Vms:
    with lab.api() as api:
        lab.nexusctl("vm", "create", "e2e-net-a", "--mem", "512", "--publish", f"{HOST_PORT}:{GUEST_PORT}")
        api.create_vm(name="e2e-net-b", mem_mib=512, role="portal")  # a portal reaches work VMs only via nexusd
        api.create_vm(name="e2e-net-c", mem_mib=512, egress="proxy", allow=["api.test", "other.test"])
        a, b = api.start_vm("e2e-net-a"), api.start_vm("e2e-net-b")
        server = f"setsid python3 -m http.server {GUEST_PORT} </dev/null >/dev/null 2>&1 &"
        script = f"cd /tmp && echo inside-a > index.html && {server}"
        assert guest(api, "e2e-net-a", script)["exit_code"] == 0
    address = a["network"]["address"]
    wait_until(lambda: fetch_in_ns(lab.host, f"http://{address}:{GUEST_PORT}/") == "inside-a\n", 30, "A's web server")
    return Vms(a, b)


def test_setup_firewall_enables_forwarding_in_its_namespace_only(lab: Lab) -> None:
    assert in_ns(lab.host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    assert "enabled IPv4 forwarding" in lab.nexusctl("setup-firewall").stdout
    assert in_ns(lab.host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == lab.root_ip_forward
    # Off again, before any VM: the first VM start turns it on by itself (see the next tests).
    in_ns(lab.host, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
    assert json.loads(lab.nexusctl("--json", "status").stdout)["network"]["egress"] is False


def test_vm_gets_its_lease_and_dns_and_reaches_the_internet_through_nat(lab: Lab, vms: Vms) -> None:
    assert in_ns(lab.host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"  # nexusd turned it on
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == lab.root_ip_forward
    assert json.loads(lab.nexusctl("--json", "status").stdout)["network"]["egress"] is True
    net = vms.a["network"]
    assert (net["gateway"], net["prefix_len"], net["ports"]) == ("10.77.0.1", 24, [f"{HOST_PORT}:{GUEST_PORT}/tcp"])
    assert net["mac"].startswith("02:") and len(net["tap"]) <= 15
    assert vms.b["network"]["address"] != net["address"]
    with lab.api() as api:
        local = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        local += f"s.connect(({INET_ADDR!r}, 9)); print(s.getsockname()[0], end='')"  # UDP connect sends nothing
        assert guest_python(api, "e2e-net-a", local) == net["address"]
        resolv = guest(api, "e2e-net-a", ["cat", "/etc/resolv.conf"])["stdout"]
        assert f"nameserver {INET_ADDR}\n" in resolv
        url = f"http://{INET_ADDR}:{INET_PORT}/"
        code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end='')"
        # the server saw the host's uplink address: the VM's own address was masqueraded
        assert guest_python(api, "e2e-net-a", code) == UPLINK_ADDR
        assert guest_python(api, "e2e-net-b", code) == UPLINK_ADDR


def test_vms_cannot_reach_each_other(lab: Lab, vms: Vms) -> None:
    """B is a portal: its only way to A is nexusd's gateway, never the network."""
    a_address = vms.a["network"]["address"]
    assert fetch_in_ns(lab.host, f"http://{a_address}:{GUEST_PORT}/") == "inside-a\n"  # A does listen
    with lab.api() as api:
        assert connect_from(api, "e2e-net-b", a_address, GUEST_PORT) == "blocked"  # bridged: isolated ports
        assert connect_from(api, "e2e-net-b", UPLINK_ADDR, HOST_PORT) == "blocked"  # routed back: forward drop
        assert connect_from(api, "e2e-net-a", INET_ADDR, INET_PORT) == "connected"  # the same probe can pass


def test_a_fork_runs_beside_its_parent_on_an_address_of_its_own(lab: Lab, vms: Vms) -> None:
    """Forked from A's running state, with A's web server in it: the fork wakes with A's MAC and address in its
    memory, and its agent gives the NIC the fork's own lease; both serve, each on its address."""
    with lab.api() as api:
        fork = api.request("POST", "/v1/vms/e2e-net-a/fork", json={"name": "e2e-net-a2"})
        try:
            net = fork["network"]
            assert fork["state"] == "ready" and net["address"] != vms.a["network"]["address"]
            assert net["mac"] != vms.a["network"]["mac"] and net["ports"] == []
            nic = guest(api, "e2e-net-a2", "cat /sys/class/net/eth0/address; hostname")["stdout"].split()
            assert nic == [net["mac"], "e2e-net-a2"]
            assert fetch_in_ns(lab.host, f"http://{net['address']}:{GUEST_PORT}/") == "inside-a\n"  # A's server
            assert fetch_in_ns(lab.host, f"http://{vms.a['network']['address']}:{GUEST_PORT}/") == "inside-a\n"
            url = f"http://{INET_ADDR}:{INET_PORT}/"
            code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end='')"
            assert guest_python(api, "e2e-net-a2", code) == UPLINK_ADDR  # out through NAT, as A
        finally:
            api.remove_vm("e2e-net-a2", force=True)


def test_published_port_reaches_the_vm_from_outside(lab: Lab, vms: Vms) -> None:
    assert fetch_in_ns(lab.inet, f"http://{UPLINK_ADDR}:{HOST_PORT}/") == "inside-a\n"


# In the guest: a GET with K's placeholder, trusting the system's CAs (SSL_CERT_FILE: with the Nexus CA, which
# intercepted hosts present) and the test CA (what a tunnelled host presents: "the internet"'s public CA).
GET = """
import ssl, sys, urllib.request
context = ssl.create_default_context()
context.load_verify_locations("/tmp/test-ca.pem")
request = urllib.request.Request(sys.argv[1], headers={"x-api-key": "nexus-secret:K"})
try:
    print(urllib.request.urlopen(request, timeout=20, context=context).read().decode(), end="")
except Exception as exc:
    print(f"refused: {exc}", end="")
"""


def test_a_proxy_vm_reaches_allowed_hosts_with_secrets_added_on_the_way_out(lab: Lab, vms: Vms) -> None:
    with lab.api() as api:
        api.send("PUT", "/v1/secrets/K", content=SECRET_VALUE.encode())
        api.request(
            "POST", "/v1/secrets/K/bindings", json={"vm": "e2e-net-c", "host": "api.test", "header": "x-api-key"}
        )
        lab.nexusctl("vm", "start", "e2e-net-c")
        try:
            assert lab.upstream_ca is not None
            api.call_tool(
                "e2e-net-c", "file_write", {"path": "/tmp/test-ca.pem", "content": lab.upstream_ca.read_text()}
            )

            def get(url: str) -> str:
                done = guest(api, "e2e-net-c", ["python3", "-c", GET, url])
                assert done["exit_code"] == 0, done
                return str(done["stdout"])

            environment = guest(api, "e2e-net-c", ["env"])["stdout"]
            assert "K=nexus-secret:K" in environment and SECRET_VALUE not in environment
            assert "https_proxy=http://10.77.0.1:3128" in environment and "SSL_CERT_FILE=" in environment, environment

            def headers_seen(url: str) -> dict[str, str]:
                text = get(url)
                shown = lab.nexusctl("--json", "vm", "egress", "e2e-net-c").stdout
                assert text.startswith("{"), f"{text}\n{shown}\n{lab.nexusd.log_text()[-3000:]}"
                seen: dict[str, str] = json.loads(text)
                return seen

            assert headers_seen("https://api.test/")["x-api-key"] == sha256(SECRET_VALUE)  # replaced, for this host
            assert headers_seen("https://other.test/")["x-api-key"] == sha256("nexus-secret:K")  # allowed, no binding
            assert "403" in get("https://blocked.test/")  # not on its allow-list
            assert connect_from(api, "e2e-net-c", INET_ADDR, TLS_PORT) == "blocked"  # around the proxy: dropped
            assert connect_from(api, "e2e-net-a", INET_ADDR, TLS_PORT) == "connected"  # an open VM still gets there
            shown = json.loads(lab.nexusctl("--json", "vm", "egress", "e2e-net-c").stdout)
            assert shown["mode"] == "proxy" and shown["allow"] == ["api.test", "other.test"]
            decisions = {(r["action"].split()[1], r["decision"]) for r in shown["recent"]}
            assert ("blocked.test:443", "deny") in decisions, shown["recent"]
            assert SECRET_VALUE not in json.dumps(shown)
            qemu = api.get_vm("e2e-net-c")["pid"]
            assert process_memory_holds(qemu, placeholder("K").encode())  # the search finds what the guest holds
            assert not process_memory_holds(qemu, SECRET_VALUE.encode())  # not in its RAM, nor in QEMU's
        finally:
            lab.nexusctl("vm", "stop", "e2e-net-c")
        drive = next(d for d in api.request("GET", "/v1/drives") if d["name"] == "e2e-net-c.root")
        root = Layout(state_dir=lab.state, runtime_dir=lab.base / "run").drive_file(drive["id"])
        assert not contains(root, SECRET_VALUE.encode())  # nor on its disk


def contains(path: Path, needle: bytes, chunk: int = 16 << 20) -> bool:
    """Whether ``path`` holds ``needle`` (read in chunks that overlap by its length: a GiB image stays on disk)."""
    tail = b""
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def process_memory_holds(pid: int, needle: bytes) -> bool:
    """Whether any readable mapping of process ``pid`` holds ``needle``: for QEMU, the guest's RAM and all of QEMU's
    own buffers (read through /proc/PID/mem, as root; nothing asks the VMM, which keeps running)."""
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r") or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            tail = b""
            for offset in range(start, end, 16 << 20):
                try:
                    mem.seek(offset)
                    block = mem.read(min(16 << 20, end - offset))
                except OSError:
                    break
                if needle in tail + block:
                    found = True
                tail = block[-len(needle) :]
    return found


def test_stop_and_rm_leave_no_tap_address_or_rule(lab: Lab, vms: Vms) -> None:
    tap, address = vms.a["network"]["tap"], vms.a["network"]["address"]
    rules = lab.rules()
    assert rules is not None and address in json.dumps(rules)
    assert tap in lab.links()
    assert lab.nexusctl("--json", "vm", "stop", "e2e-net-a").returncode == 0
    assert tap not in lab.links()
    rules = lab.rules()
    assert rules is not None and address not in json.dumps(rules)
    lab.nexusctl("vm", "rm", "e2e-net-a")
    with sqlite3.connect(f"file:{lab.state / 'nexus.db'}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM net_leases WHERE vm_id = ?", (vms.a["id"],)).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM vm_ports WHERE vm_id = ?", (vms.a["id"],)).fetchone()[0] == 0
    neighbours = run("ip", "-n", lab.host, "neigh", "show", address).stdout
    assert "lladdr" not in neighbours, neighbours
    assert tap not in lab.links() and vms.b["network"]["tap"] in lab.links()


def test_restarts_keep_a_running_vm_its_address_and_egress_and_one_copy_of_each_rule(lab: Lab, vms: Vms) -> None:
    before = lab.rules()
    assert before is not None and len(before) >= 7
    b_tap, b_address = vms.b["network"]["tap"], vms.b["network"]["address"]
    with lab.api() as api:
        pid = api.get_vm("e2e-net-b")["pid"]
    # nexusd dies hard; B runs on with its TAP; the next nexusd adopts B: it keeps its address and its way out.
    lab.nexusd.proc.kill()
    lab.nexusd.proc.wait()
    assert b_tap in lab.links()
    lab.start_nexusd(keep_vms=True)
    url = f"http://{INET_ADDR}:{INET_PORT}/"
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end='')"
    with lab.api() as api:
        wait_until(lambda: api.get_vm("e2e-net-b")["state"] == "ready", 15, "B adopted and ready")
        vm = api.get_vm("e2e-net-b")
        assert (vm["pid"], vm["network"]["address"], vm["network"]["tap"]) == (pid, b_address, b_tap)
        print("GUEST", guest(api, "e2e-net-b", ["sh", "-c", "cat /proc/net/arp /proc/net/dev"]))
        print(
            "HOST",
            in_ns(lab.host, "sh", "-c", "ip neigh; bridge fdb show br nexus0; ip -s link show dev " + b_tap).stdout,
        )
        print("LOG", lab.nexusd.log_text()[-3000:])
        assert guest_python(api, "e2e-net-b", code) == UPLINK_ADDR
    assert lab.nexusd.stop() == 0  # cleanly this time: B runs on again
    assert b_tap in lab.links()
    lab.start_nexusd()
    after = lab.rules()
    assert after is not None
    dumped = [json.dumps(rule, sort_keys=True) for rule in after]
    assert len(dumped) == len(set(dumped)), "a rule is there twice"
    assert sorted(dumped) == sorted(json.dumps(rule, sort_keys=True) for rule in before)
    assert set(lab.links()) == {"lo", "uplink", "nexus0", b_tap}
    with lab.api() as api:
        wait_until(lambda: api.get_vm("e2e-net-b")["state"] == "ready", 15, "B adopted again")
        assert guest_python(api, "e2e-net-b", code) == UPLINK_ADDR


def test_cleanup_network_removes_bridge_taps_and_table(lab: Lab, vms: Vms) -> None:
    with lab.api() as api:
        assert api.get_vm("e2e-net-b")["state"] == "ready"  # still running from the restarts above
        refused = lab.nexusctl("admin", "cleanup-network", check=False)
        assert refused.returncode == 5 and "stop them first" in refused.stderr
        api.stop_vm("e2e-net-b")
    report = json.loads(lab.nexusctl("--json", "admin", "cleanup-network").stdout)
    assert "nexus0" in report["links"] and report["table"] is True
    assert set(lab.links()) == {"lo", "uplink"}
    assert lab.rules() is None
    again = json.loads(lab.nexusctl("--json", "admin", "cleanup-network").stdout)
    assert again == {"links": [], "table": False, "leases_dropped": 0}
    lab.nexusctl("vm", "rm", "e2e-net-b")
