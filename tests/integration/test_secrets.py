"""Secrets against a real nexusd, over REST, the SDK and the CLI: the lifecycle; every bad input with its status
and nothing stored; agent tokens refused; a value never in an answer, nexusd's log, the audit log or the database
files; the start-up sweep of the secrets dir."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.cli.main import main
from nexus.domain import Conflict, Invalid, NotFound, TooLarge
from nexus.domain.egress import MAX_SECRET_BYTES
from nexus.sdk import Nexus
from tests.api_client import NexusClient
from tests.helpers import Daemon, start_daemon

ADMIN = "secrets-admin-token-0123456789"
VALUE = f"sk-test-{secrets.token_hex(16)}"  # unique: found anywhere, it leaked
OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    base = tmp_path_factory.mktemp("secrets")
    (base / "token").write_text(ADMIN + "\n")
    (base / "token").chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    d = start_daemon(base, "--listen", address, "--token-file", str(base / "token"), env={"PATH": str(base / "e")})
    try:
        yield d, f"http://{address}"
    finally:
        d.stop()


ANSWERS: list[bytes] = []  # every raw answer the tests got (headers too), searched for the value at the end


def send(sock: Path, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One raw request over nexusd's socket, whatever its status."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://nexusd") as http:
        response = http.request(method, path, **kwargs)
    ANSWERS.append(response.content + json.dumps(dict(response.headers)).encode())
    return response


def _stored(d: Daemon) -> tuple[list[Any], list[str]]:
    """What the API lists and the files of the secrets dir (temp files too)."""
    return send(d.socket, "GET", "/v1/secrets").json(), sorted(os.listdir(d.state_dir / "secrets"))


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    message: str = response.json()["error"]["message"]
    return message


def test_lifecycle_over_rest(daemon: tuple[Daemon, str]) -> None:
    d, _ = daemon
    with NexusClient(d.socket) as api:
        vm = api.create_vm(name="web", tags=["team=a"])
        made = send(d.socket, "PUT", "/v1/secrets/API_KEY", content=VALUE.encode(), headers=OCTETS)
        assert made.status_code == 200, made.text
        assert made.json() | {"created_at": 0, "updated_at": 0} == {
            "name": "API_KEY",
            "size_bytes": len(VALUE),
            "created_at": 0,
            "updated_at": 0,
            "usable": True,
            "placeholder": "nexus-secret:API_KEY",
            "bindings": [],
        }
        secrets_dir = d.state_dir / "secrets"
        assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((secrets_dir / "API_KEY").stat().st_mode) == 0o600
        by_vm = send(
            d.socket,
            "POST",
            "/v1/secrets/API_KEY/bindings",
            json={"vm": "web", "host": "api.test", "header": "X-Api-Key"},
        )
        assert by_vm.status_code == 201, by_vm.text
        assert {k: by_vm.json()[k] for k in ("vm_id", "vm_name", "tag", "host", "header", "bearer")} == {
            "vm_id": vm["id"],
            "vm_name": "web",
            "tag": None,
            "host": "api.test",
            "header": "x-api-key",
            "bearer": False,
        }
        by_tag = send(
            d.socket, "POST", "/v1/secrets/API_KEY/bindings", json={"tag": "team=a", "host": "api.test", "bearer": True}
        )
        assert (by_tag.json()["header"], by_tag.json()["bearer"]) == ("authorization", True)
        listed = send(d.socket, "GET", "/v1/secrets").json()
        assert [b["id"] for b in listed[0]["bindings"]] == [by_vm.json()["id"], by_tag.json()["id"]]

        message = _error(send(d.socket, "DELETE", "/v1/secrets/API_KEY"), 409, "conflict")
        assert "is bound" in message
        assert _stored(d)[1] == ["API_KEY"]
        assert send(d.socket, "DELETE", f"/v1/secrets/bindings/{by_tag.json()['id']}").status_code == 204
        _error(send(d.socket, "DELETE", f"/v1/secrets/bindings/{by_tag.json()['id']}"), 404, "not_found")
        api.remove_vm("web")  # its binding goes with it
        assert send(d.socket, "GET", "/v1/secrets/API_KEY").json()["bindings"] == []
        assert send(d.socket, "DELETE", "/v1/secrets/API_KEY").status_code == 204
        assert _stored(d) == ([], [])
        _error(send(d.socket, "GET", "/v1/secrets/API_KEY"), 404, "not_found")


def test_force_removes_a_bound_secret_with_its_bindings(daemon: tuple[Daemon, str]) -> None:
    d, _ = daemon
    send(d.socket, "PUT", "/v1/secrets/F", content=VALUE.encode(), headers=OCTETS)
    send(d.socket, "POST", "/v1/secrets/F/bindings", json={"tag": "x", "host": "a.test", "bearer": True})
    assert send(d.socket, "DELETE", "/v1/secrets/F", params={"force": True}).status_code == 204
    assert _stored(d) == ([], [])


BAD_BINDINGS: list[tuple[str, dict[str, Any], int, str]] = [
    ("NOPE", {"vm": "box", "host": "a.test", "header": "x-k"}, 404, "no secret 'NOPE'"),
    ("B", {"vm": "nope", "host": "a.test", "header": "x-k"}, 404, "nope"),
    ("B", {"vm": "box", "host": "*.a.test", "header": "x-k"}, 422, "invalid host"),
    ("B", {"vm": "box", "host": "a.test:443", "header": "x-k"}, 422, "invalid host"),
    ("B", {"vm": "box", "host": "not a host", "header": "x-k"}, 422, "invalid host"),
    ("B", {"vm": "box", "host": "a.test", "header": "x k"}, 422, "invalid header"),
    ("B", {"vm": "box", "tag": "t", "host": "a.test", "header": "x-k"}, 422, "exactly one of vm and tag"),
    ("B", {"host": "a.test", "header": "x-k"}, 422, "exactly one of vm and tag"),
    ("B", {"vm": "box", "host": "a.test"}, 422, "exactly one of them"),
    ("B", {"vm": "box", "host": "a.test", "header": "x-k", "bearer": True}, 422, "exactly one of them"),
    ("B", {"vm": "box", "host": "a.test", "header": "x-k", "value": "v"}, 422, "unknown field"),
    ("B", {"vm": "box", "host": "a.test", "bearer": "yes"}, 422, "bearer"),
]


@pytest.mark.parametrize(("name", "body", "status", "message"), BAD_BINDINGS)
def test_bad_bindings_are_refused_and_store_nothing(
    daemon: tuple[Daemon, str], name: str, body: dict[str, Any], status: int, message: str
) -> None:
    d, _ = daemon
    with NexusClient(d.socket) as api:
        if not api.list_vms():
            api.create_vm(name="box")
    send(d.socket, "PUT", "/v1/secrets/B", content=VALUE.encode(), headers=OCTETS)
    before = _stored(d)
    answer = send(d.socket, "POST", f"/v1/secrets/{name}/bindings", json=body)
    assert message in _error(answer, status, {404: "not_found", 422: "invalid"}[status])
    assert _stored(d) == before
    assert before[0][0]["bindings"] == []
    send(d.socket, "DELETE", "/v1/secrets/B")


@pytest.mark.parametrize(
    ("path", "value", "status", "code", "message"),
    [
        ("/v1/secrets/K", b"x" * (MAX_SECRET_BYTES + 1), 413, "payload_too_large", "at most 65536 bytes"),
        ("/v1/secrets/K", b"x" * (2 * 1024 * 1024), 413, "payload_too_large", "larger than"),  # the API's own cap
        ("/v1/secrets/K", b"", 422, "invalid", "empty"),
        ("/v1/secrets/K", VALUE.encode() + b"\r\nX-Evil: 1", 422, "invalid", "line breaks"),
        ("/v1/secrets/K", VALUE.encode() + b"\xff", 422, "invalid", "UTF-8"),
        ("/v1/secrets/not-a-name", VALUE.encode(), 422, "invalid", "invalid secret name"),
        ("/v1/secrets/..", VALUE.encode(), 404, "not_found", ""),
    ],
)
def test_bad_values_are_refused_and_store_nothing(
    daemon: tuple[Daemon, str], path: str, value: bytes, status: int, code: str, message: str
) -> None:
    d, _ = daemon
    send(d.socket, "PUT", "/v1/secrets/K", content=b"old", headers=OCTETS)
    before = _stored(d)
    answer = send(d.socket, "PUT", path, content=value, headers=OCTETS)
    assert message in _error(answer, status, code)
    assert _stored(d) == before
    assert (d.state_dir / "secrets" / "K").read_bytes() == b"old"
    send(d.socket, "DELETE", "/v1/secrets/K")


def test_the_sdk_speaks_the_domain_errors(daemon: tuple[Daemon, str]) -> None:
    d, _ = daemon
    with Nexus(d.socket) as nexus:
        nexus.vms.create("sdk-vm")
        assert nexus.secrets.set("S", VALUE).size_bytes == len(VALUE)
        with pytest.raises(TooLarge):
            nexus.secrets.set("S", b"x" * (MAX_SECRET_BYTES + 1))
        with pytest.raises(Invalid, match="invalid host"):
            nexus.secrets.bind("S", "*.a.test", vm="sdk-vm", header="x-k")
        with pytest.raises(NotFound):
            nexus.secrets.bind("S", "a.test", vm="no-such-vm", header="x-k")
        made = nexus.secrets.bind("S", "a.test", vm="sdk-vm", bearer=True)
        with pytest.raises(Conflict, match="is bound"):
            nexus.secrets.remove("S")
        assert [s.name for s in nexus.secrets.list()] == ["S"]
        nexus.secrets.unbind(made.id)
        nexus.secrets.remove("S")
        assert nexus.secrets.list() == []
        nexus.vms.remove("sdk-vm")


def test_agent_tokens_cannot_reach_secrets(daemon: tuple[Daemon, str]) -> None:
    d, url = daemon
    with NexusClient(d.socket) as api:
        api.create_vm(name="agent")
        token = api.request("POST", "/v1/tokens", json={"vm": "agent"})["token"]
        send(d.socket, "PUT", "/v1/secrets/T", content=VALUE.encode(), headers=OCTETS)
    for bearer, status in ((token, 403), (ADMIN, 200)):
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {bearer}"}) as tcp:
            for method, path, kwargs in (
                ("GET", "/v1/secrets", {}),
                ("PUT", "/v1/secrets/T", {"content": b"other", "headers": OCTETS}),
                ("POST", "/v1/secrets/T/bindings", {"json": {"vm": "agent", "host": "a.test", "bearer": True}}),
            ):
                answer = tcp.request(method, path, **kwargs)
                ANSWERS.append(answer.content)
                assert answer.status_code == (201 if status == 200 and method == "POST" else status), answer.text
    with NexusClient(d.socket) as api:
        send(d.socket, "DELETE", "/v1/secrets/T", params={"force": True})
        api.remove_vm("agent")


def test_the_cli(
    daemon: tuple[Daemon, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _ = daemon
    sock = ["--socket", str(d.socket)]

    class Tty(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Tty(io.BytesIO(VALUE.encode())))
    assert main([*sock, "secret", "set", "FROM_STDIN"]) == 2
    assert "pipe the value in" in capsys.readouterr().err

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(VALUE.encode() + b"\n")))
    assert main([*sock, "secret", "set", "FROM_STDIN"]) == 0
    assert capsys.readouterr().out.strip() == f"secret FROM_STDIN set ({len(VALUE)} bytes)"
    assert (d.state_dir / "secrets" / "FROM_STDIN").read_bytes() == VALUE.encode()  # the newline dropped

    (tmp_path / "value").write_bytes(VALUE.encode() + b"\r\n")
    assert main([*sock, "secret", "set", "FROM_FILE", "--from-file", str(tmp_path / "value")]) == 0
    assert (d.state_dir / "secrets" / "FROM_FILE").read_bytes() == VALUE.encode()
    (tmp_path / "big").write_bytes(b"x" * (MAX_SECRET_BYTES + 1) + b"\n")
    assert main([*sock, "secret", "set", "BIG", "--from-file", str(tmp_path / "big")]) == 2
    assert "at most 65536 bytes" in capsys.readouterr().err
    assert main([*sock, "secret", "set", "BIG", "--from-file", str(tmp_path / "none")]) == 2
    assert "cannot read" in capsys.readouterr().err

    assert main([*sock, "vm", "create", "cli-vm"]) == 0
    assert main([*sock, "secret", "bind", "FROM_FILE", "--vm", "cli-vm", "--host", "api.test", "--header", "x-k"]) == 0
    out = capsys.readouterr().out
    assert "secret FROM_FILE bound: #" in out and "api.test x-k (VM cli-vm)" in out
    assert main([*sock, "secret", "bind", "FROM_FILE", "--tag", "a=b", "--host", "*.test", "--bearer"]) == 2
    assert "invalid host" in capsys.readouterr().err
    assert main([*sock, "secret", "bind", "NOPE", "--tag", "a=b", "--host", "api.test", "--bearer"]) == 4

    capsys.readouterr()
    assert main([*sock, "--json", "secret", "ls"]) == 0
    listed = {s["name"]: s for s in json.loads(capsys.readouterr().out)}
    assert set(listed) == {"FROM_STDIN", "FROM_FILE"}
    binding = listed["FROM_FILE"]["bindings"][0]
    assert main([*sock, "secret", "ls"]) == 0
    table = capsys.readouterr().out
    assert "FROM_STDIN" in table and f"#{binding['id']} api.test x-k (VM cli-vm)" in table

    assert main([*sock, "secret", "rm", "FROM_FILE"]) == 5
    assert "is bound" in capsys.readouterr().err
    assert main([*sock, "secret", "unbind", str(binding["id"])]) == 0
    assert main([*sock, "secret", "rm", "FROM_FILE"]) == 0
    assert main([*sock, "secret", "bind", "FROM_STDIN", "--vm", "cli-vm", "--host", "api.test", "--bearer"]) == 0
    assert main([*sock, "secret", "rm", "FROM_STDIN", "--force"]) == 0
    assert main([*sock, "vm", "rm", "cli-vm"]) == 0
    capsys.readouterr()
    assert main([*sock, "--json", "secret", "ls"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_zz_the_value_is_nowhere_but_its_file(daemon: tuple[Daemon, str]) -> None:
    """Last in the module: after every test above sent the value around, it is in no answer, no log line, no
    audit entry (not even as a sha256) and no database file."""
    d, _ = daemon
    value = VALUE.encode()
    digest = hashlib.sha256(value).hexdigest().encode()
    wrong = send(d.socket, "POST", "/v1/secrets/WRONG", content=value, headers={"content-type": "application/json"})
    assert wrong.status_code == 405  # a value sent with the wrong method is not digested either
    assert ANSWERS
    for body in ANSWERS:
        assert value not in body and digest not in body
    audit = send(d.socket, "GET", "/v1/audit", params={"limit": 1000}).content
    assert b"PUT /v1/secrets/{name}" in audit and value not in audit and digest not in audit
    assert value not in d.log.read_bytes() and b"secret API_KEY set" in d.log.read_bytes()
    files = list(d.state_dir.glob("nexus.db*"))
    assert files
    for path in files:
        assert value not in path.read_bytes() and digest not in path.read_bytes(), path


def test_the_start_up_sweep(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, env={"PATH": str(tmp_path / "e")})
    try:
        with Nexus(d.socket) as nexus:
            nexus.secrets.set("KEPT", "v")
            nexus.secrets.set("LOST", "v")
    finally:
        d.stop()
    secrets_dir = d.state_dir / "secrets"
    (secrets_dir / "LOST").unlink()
    (secrets_dir / "ORPHAN").write_text("a set cut short before its row")
    (secrets_dir / ".KEPT.abc123").write_text("a write cut short before its rename")
    d = start_daemon(tmp_path, env={"PATH": str(tmp_path / "e")})
    try:
        assert sorted(os.listdir(secrets_dir)) == ["KEPT"]
        with Nexus(d.socket) as nexus:
            assert {s.name: s.usable for s in nexus.secrets.list()} == {"KEPT": True, "LOST": False}
        assert "secret LOST has no value file" in d.log_text()
    finally:
        d.stop()
