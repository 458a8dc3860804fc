from __future__ import annotations

from pathlib import Path

import pytest

from nexus.cli.main import _hoist_global_flags
from nexus.daemon.config import Config, load
from nexus.domain import Invalid
from nexus.vmm.firecracker import JailerOptions


def test_defaults_without_file(tmp_path: Path) -> None:
    config = load(None, {})
    assert config == Config() or Path("/etc/nexus/nexusd.toml").exists()
    assert Config().socket == Path("/run/nexus/nexusd.sock")
    assert Config().socket_mode == 0o660
    assert Config().state_dir == Path("/var/lib/nexus")


def test_file_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('state_dir = "/srv/nexus"\nsocket = "/tmp/a.sock"\nsocket_mode = "0600"\n')
    config = load(cfg, {"socket": Path("/tmp/b.sock"), "state_dir": None})
    assert config.state_dir == Path("/srv/nexus")
    assert config.socket == Path("/tmp/b.sock")
    assert config.socket_mode == 0o600


def test_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "n.toml"
    cfg.write_text('colour = "blue"\n')
    with pytest.raises(Invalid, match="unknown config keys: colour"):
        load(cfg, {})
    cfg.write_text("state_dir = \n")
    with pytest.raises(Invalid, match="not valid TOML"):
        load(cfg, {})
    with pytest.raises(Invalid, match="cannot read config"):
        load(tmp_path / "missing.toml", {})


def test_tcp_listener_needs_a_token(tmp_path: Path) -> None:
    assert Config().read_token() is None
    with pytest.raises(Invalid, match="needs --token-file"):
        Config(listen="127.0.0.1:8080").read_token()
    short = tmp_path / "t"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(Invalid, match="shorter than 16"):
        Config(listen="127.0.0.1:8080", token_file=short).read_token()
    good = tmp_path / "g"
    good.write_text("x" * 32 + "\n")
    good.chmod(0o600)
    assert Config(listen="127.0.0.1:8080", token_file=good).read_token() == "x" * 32
    good.chmod(0o400)
    assert Config(listen="127.0.0.1:8080", token_file=good).read_token() == "x" * 32


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660])
def test_token_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("x" * 32)
    token_file.chmod(mode)
    with pytest.raises(Invalid) as caught:
        Config(listen="127.0.0.1:8080", token_file=token_file).read_token()
    assert caught.value.message == (
        f"token file {token_file} is open to group or others (mode {mode:04o}): chmod 600 {token_file}"
    )


def test_token_file_of_another_user_is_refused(tmp_path: Path) -> None:
    import os
    import stat

    from nexus.daemon.credentials import check_private

    token_file = tmp_path / "token"
    token_file.write_text("x" * 32)
    token_file.chmod(0o600)
    info = os.stat(token_file)
    fields = list(info)
    fields[stat.ST_UID] = 4242 if os.geteuid() != 4242 else 4243
    with pytest.raises(Invalid, match=r"belongs to uid 424\d, not root .*: chown \d+ .* && chmod 600 "):
        check_private(token_file, "token file", os.stat_result(fields))
    with pytest.raises(Invalid, match="not a regular file"):
        check_private(tmp_path, "token file", os.stat(tmp_path))


def test_tls_keys(tmp_path: Path) -> None:
    assert Config().tls_files() is None
    both = Config(listen="127.0.0.1:8443", tls_cert=Path("/c.pem"), tls_key=Path("/k.pem"))
    assert both.tls_files() == (Path("/c.pem"), Path("/k.pem"))
    with pytest.raises(Invalid, match="needs both tls_cert and tls_key"):
        Config(listen="127.0.0.1:8443", tls_cert=Path("/c.pem")).tls_files()
    with pytest.raises(Invalid, match="give --listen too"):
        Config(tls_cert=Path("/c.pem"), tls_key=Path("/k.pem")).tls_files()
    cfg = tmp_path / "n.toml"
    cfg.write_text('listen = "127.0.0.1:8443"\ntls_cert = "/etc/nexus/cert.pem"\ntls_key = "/etc/nexus/key.pem"\n')
    assert load(cfg, {}).tls_files() == (Path("/etc/nexus/cert.pem"), Path("/etc/nexus/key.pem"))
    assert load(cfg, {"tls_cert": Path("/x.pem")}).tls_cert == Path("/x.pem")


@pytest.mark.parametrize("listen", ["8080", "host:", ":80", "h:0", "h:99999", "h:x"])
def test_bad_listen(listen: str) -> None:
    with pytest.raises(Invalid, match="HOST:PORT"):
        Config(listen=listen).tcp_address()


def test_listen_parsing() -> None:
    assert Config(listen="127.0.0.1:8080").tcp_address() == ("127.0.0.1", 8080)
    assert Config(listen="[::1]:9").tcp_address() == ("::1", 9)


def test_json_flag_anywhere_before_double_dash() -> None:
    assert _hoist_global_flags(["vm", "list", "--json"]) == ["--json", "vm", "list"]
    assert _hoist_global_flags(["vm", "list"]) == ["vm", "list"]
    assert _hoist_global_flags(["vm", "exec", "a", "--", "x", "--json"]) == [
        "vm",
        "exec",
        "a",
        "--",
        "x",
        "--json",
    ]


def test_jailer_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "nexusd.toml"
    cfg.write_text(
        'firecracker_binary = "/opt/fc/firecracker"\njailer_binary = "/opt/fc/jailer"\njailer_uid = 123\n'
        'jailer_gid = 100\njailer_chroot_base = "/var/lib/nexus/jail"\n'
    )
    config = load(cfg, {})
    assert config.firecracker_binary == Path("/opt/fc/firecracker")
    jailer = config.jailer()
    assert jailer is not None and (jailer.uid, jailer.gid) == (123, 100)
    assert jailer.chroot_base == Path("/var/lib/nexus/jail")
    assert Config().jailer() is None
    with pytest.raises(Invalid, match="needs jailer_uid and jailer_gid"):
        Config(jailer_binary=Path("/opt/fc/jailer"), jailer_uid=123).jailer()
    with pytest.raises(Invalid, match="only apply with jailer_binary"):
        Config(jailer_uid=123).jailer()
    cfg.write_text('jailer_uid = "nobody"\n')
    with pytest.raises(Invalid, match="jailer_uid must be a non-negative integer"):
        load(cfg, {})


def test_jailer_isolation_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "nexusd.toml"
    cfg.write_text(
        'jailer_binary = "/opt/fc/jailer"\njailer_uid = 123\njailer_gid = 100\njailer_cgroup_version = 1\n'
        'jailer_cgroups = ["cpu.shares=512", "memory.limit_in_bytes=1G"]\njailer_parent_cgroup = "nexus"\n'
        "jailer_new_pid_ns = true\n"
    )
    jailer = load(cfg, {}).jailer()
    assert jailer is not None and jailer.new_pid_ns and jailer.parent_cgroup == "nexus"
    assert (jailer.cgroup_version, jailer.cgroups) == (1, (("cpu.shares", "512"), ("memory.limit_in_bytes", "1G")))
    assert Config(jailer_binary=Path("/j"), jailer_uid=1, jailer_gid=1).jailer() == JailerOptions(Path("/j"), 1, 1)
    bad = {
        'jailer_cgroups = ["memory.max"]': "must be 'controller.file=value'",
        'jailer_cgroups = ["max=1"]': "must look like 'controller.file'",
        "jailer_cgroup_version = 3": "must be 1 or 2",
        'jailer_parent_cgroup = "/abs"': "must be a relative cgroup path",
        'jailer_parent_cgroup = "a/../b"': "must be a relative cgroup path",
        'jailer_new_pid_ns = "yes"': "must be true or false",
    }
    for line, needle in bad.items():
        cfg.write_text(f'jailer_binary = "/opt/fc/jailer"\njailer_uid = 123\njailer_gid = 100\n{line}\n')
        with pytest.raises(Invalid, match=needle):
            load(cfg, {}).jailer()
    with pytest.raises(Invalid, match="jailer_cgroups, jailer_new_pid_ns only apply with jailer_binary"):
        Config(jailer_cgroups=("memory.max=1G",), jailer_new_pid_ns=True).jailer()


def test_network_switch(tmp_path: Path) -> None:
    assert Config().network is True
    cfg = tmp_path / "n.toml"
    cfg.write_text("network = false\n")
    assert load(cfg, {}).network is False
    assert load(None, {"network": False}).network is False  # --no-network
    cfg.write_text('network = "no"\n')
    with pytest.raises(Invalid, match="network must be true or false"):
        load(cfg, {})


def test_mcp_origin_policy(tmp_path: Path) -> None:
    conf = tmp_path / "n.toml"
    conf.write_text(
        'listen = "10.1.2.3:7777"\nmcp_allowed_hosts = ["nexus.example.internal"]\n'
        'mcp_allowed_origins = ["https://console.example.internal"]\nmcp_session_idle_timeout_s = 5\n'
    )
    config = load(conf, {})
    assert config.mcp_session_idle_timeout_s == 5.0
    policy = config.origin_policy()
    for host in ("10.1.2.3:7777", "nexus.example.internal:7777", "NEXUS.example.internal", "localhost", "nexusd"):
        assert policy.refusal(host, None) is None, host
    assert policy.refusal("127.0.0.1:1", "https://console.example.internal") is None
    assert policy.refusal("127.0.0.1:1", "http://127.0.0.1:5173") is None
    assert "mcp_allowed_hosts" in (policy.refusal("10.1.2.4:7777", None) or "")
    assert "mcp_allowed_origins" in (policy.refusal("localhost", "https://evil.example") or "")
    assert policy.refusal(None, None) == "the request has no Host header"
    conf.write_text("")
    assert load(conf, {"listen": "[::1]:7777"}).origin_policy().refusal("[::1]:7777", None) is None
    assert load(conf, {"listen": "0.0.0.0:7777"}).origin_policy().refusal("0.0.0.0:7777", None) is not None
    conf.write_text('mcp_allowed_hosts = "one"\n')
    with pytest.raises(Invalid, match="list of non-empty strings"):
        load(conf, {})
