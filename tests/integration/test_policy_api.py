"""Portal policy over the API and the CLI, against a real nexusd: rules are added, listed and removed; bad rules
are refused with a message and change nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from nexus.cli.main import main
from nexus.domain import Invalid, NotFound
from tests.api_client import NexusClient
from tests.helpers import Daemon, start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("policy")
    d = start_daemon(base, env={"PATH": str(base / "empty-path")})  # no VMM: nothing boots
    try:
        yield d
    finally:
        d.stop()


def test_rules_over_rest(daemon: Daemon) -> None:
    with NexusClient(daemon.socket) as api:
        made = api.send(
            "POST",
            "/v1/policies",
            json={"portal": "p", "work": "tag:team=a", "tools": ["run_command", "file_read"], "calls_per_minute": 10},
        )
        assert made.status_code == 201, made.text
        rule = made.json()
        assert (rule["portal"], rule["work"], rule["tools"], rule["calls_per_minute"], rule["manage"]) == (
            "p",
            "tag:team=a",
            ["run_command", "file_read"],
            10,
            False,
        )
        manage = api.request(
            "POST",
            "/v1/policies",
            json={"portal": "tag:agents", "work": "@created", "manage": True, "images": ["debian-bookworm"]},
        )
        assert (manage["manage"], manage["max_vms"], manage["images"]) == (True, 1, ["debian-bookworm"])
        assert [r["id"] for r in api.request("GET", "/v1/policies")] == [rule["id"], manage["id"]]
        assert api.send("DELETE", f"/v1/policies/{rule['id']}").status_code == 204
        with pytest.raises(NotFound, match=f"no policy rule {rule['id']}"):  # a 404
            api.send("DELETE", f"/v1/policies/{rule['id']}")
        assert [r["id"] for r in api.request("GET", "/v1/policies")] == [manage["id"]]
        api.send("DELETE", f"/v1/policies/{manage['id']}")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"portal": "@created", "work": "w", "tools": ["*"]}, "not portals"),
        ({"portal": "p", "work": "Not A Name", "tools": ["*"]}, "invalid selector"),
        ({"portal": "p", "work": "w"}, "some tools"),
        ({"portal": "p", "work": "w", "tools": ["rm -rf /"]}, "invalid tool name"),
        ({"portal": "p", "work": "w", "tools": ["*"], "calls_per_minute": 0}, "calls_per_minute"),
        ({"portal": "p", "work": "w", "tools": ["*"], "sudo": True}, "sudo"),
    ],
)
def test_bad_rules_are_refused_and_change_nothing(daemon: Daemon, body: dict[str, object], message: str) -> None:
    with NexusClient(daemon.socket) as api:
        with pytest.raises(Invalid, match=message):  # a 422
            api.send("POST", "/v1/policies", json=body)
        assert api.request("GET", "/v1/policies") == []


def test_rules_from_the_cli(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(daemon.socket)
    assert main(["--socket", sock, "policy", "allow", "p", "tag:team=a", "--tools", "run_command,file_read"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rule ") and "p → tag:team=a: run_command, file_read" in out
    assert main(["--socket", sock, "--json", "policy", "ls"]) == 0
    rules = json.loads(capsys.readouterr().out)
    assert [(r["portal"], r["work"]) for r in rules] == [("p", "tag:team=a")]
    assert main(["--socket", sock, "policy", "ls"]) == 0
    assert "tag:team=a" in capsys.readouterr().out
    assert main(["--socket", sock, "policy", "allow", "p", "@created", "--manage", "--max-vms", "2"]) == 0
    assert "manage: max 2 VMs" in capsys.readouterr().out
    assert main(["--socket", sock, "policy", "allow", "@created", "w"]) != 0
    assert "not portals" in capsys.readouterr().err
    for rule in rules + json.loads(_ls(sock, capsys))[1:]:
        assert main(["--socket", sock, "policy", "rm", str(rule["id"])]) == 0
    capsys.readouterr()
    assert json.loads(_ls(sock, capsys)) == []


def _ls(sock: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["--socket", sock, "--json", "policy", "ls"]) == 0
    return capsys.readouterr().out
