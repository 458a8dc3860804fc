"""The REST API through the ASGI transport, on a real SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from nexus.api import create_app
from nexus.daemon.wiring import wire
from nexus.domain import Layout
from nexus.store import open_database
from nexus.workspaces import probe_backend

pytestmark = pytest.mark.anyio


def make_app(tmp_path: Path, token: str | None = None, base_url: str = "http://nexusd") -> httpx.AsyncClient:
    conn = open_database(tmp_path / "nexus.db")
    layout = Layout(tmp_path / "state", tmp_path / "run")
    services, _ = wire(conn, layout, None, "none in this test", probe_backend(layout.state_dir))
    app = create_app(services, tcp_token=token)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with make_app(tmp_path) as client:
        yield client


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


async def test_health(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/health")
    assert r.status_code == 200
    assert r.json()["driver"] == {"name": None, "reason": "none in this test"}
    assert r.json()["vms"] == 0


async def test_create_get_list_delete(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/vms", json={"name": "web", "vcpus": 2, "mem_mib": 1024, "tags": ["b", "a"]})
    assert r.status_code == 201, r.text
    vm = r.json()
    assert vm["state"] == "created"
    assert vm["role"] == "work"
    assert vm["tags"] == ["a", "b"]
    assert len(vm["id"]) == 12
    assert vm["image"] == "debian-bookworm"
    assert vm["kernel"] == "cloud-amd64"

    assert (await api.get("/v1/vms/web")).json()["id"] == vm["id"]
    assert (await api.get(f"/v1/vms/{vm['id']}")).json()["name"] == "web"
    assert (await api.get(f"/v1/vms/{vm['id'][:5]}")).json()["name"] == "web"
    assert [v["name"] for v in (await api.get("/v1/vms")).json()] == ["web"]

    r = await api.delete("/v1/vms/web")
    assert r.status_code == 204
    assert r.content == b""
    _error(await api.get("/v1/vms/web"), 404, "not_found")
    assert (await api.get("/v1/vms")).json() == []


async def test_defaults_come_from_settings(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/settings/default_vcpus", json={"value": 3})).status_code == 200
    assert (await api.put("/v1/settings/default_image", json={"value": "alpine"})).status_code == 200
    vm = (await api.post("/v1/vms", json={"name": "x"})).json()
    assert vm["vcpus"] == 3
    assert vm["image"] == "alpine"
    assert vm["mem_mib"] == 512


async def test_filters(api: httpx.AsyncClient) -> None:
    await api.post("/v1/vms", json={"name": "a", "role": "portal", "tags": ["t1", "t2"]})
    await api.post("/v1/vms", json={"name": "b", "role": "work", "tags": ["t1"]})
    await api.post("/v1/vms", json={"name": "c", "role": "service"})

    async def names(params: dict[str, str | list[str]]) -> list[str]:
        r = await api.get("/v1/vms", params=params)
        assert r.status_code == 200, r.text
        return [v["name"] for v in r.json()]

    assert await names({"role": "portal"}) == ["a"]
    assert await names({"tag": "t1"}) == ["a", "b"]
    assert await names({"tag": ["t1", "t2"]}) == ["a"]
    assert await names({"state": "created"}) == ["a", "b", "c"]
    assert await names({"state": "ready"}) == []
    _error(await api.get("/v1/vms", params={"state": "sleeping"}), 422, "invalid")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "Bad_Name"}, "invalid name"),
        ({"name": "ok", "vcpus": 0}, "vcpus must be an integer from 1 to 32"),
        ({"name": "ok", "vcpus": 33}, "vcpus"),
        ({"name": "ok", "mem_mib": 32}, "mem_mib"),
        ({"name": "ok", "mem_mib": 70000}, "mem_mib"),
        ({"name": "ok", "role": "boss"}, "role"),
        ({"name": "ok", "colour": "red"}, "colour: unknown field"),
        ({"name": "ok", "tags": ["bad tag"]}, "invalid tag"),
        ({}, "name"),
    ],
)
async def test_bad_input_is_422_and_changes_nothing(
    api: httpx.AsyncClient, body: dict[str, object], fragment: str
) -> None:
    message = _error(await api.post("/v1/vms", json=body), 422, "invalid")
    assert fragment in message
    assert (await api.get("/v1/vms")).json() == []


async def test_malformed_json_is_400(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/vms", content=b"{nope", headers={"content-type": "application/json"})
    _error(r, 400, "bad_request")


async def test_body_over_1_mib_is_413(api: httpx.AsyncClient) -> None:
    big = {"name": "big", "image": "x" * (1024 * 1024 + 10)}
    _error(await api.post("/v1/vms", json=big), 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"name": "big", "image": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    r = await api.post("/v1/vms", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 413, "payload_too_large")
    assert (await api.get("/v1/vms")).json() == []


async def test_duplicate_name_is_409(api: httpx.AsyncClient) -> None:
    assert (await api.post("/v1/vms", json={"name": "dup"})).status_code == 201
    assert "already exists" in _error(await api.post("/v1/vms", json={"name": "dup"}), 409, "conflict")
    assert len((await api.get("/v1/vms")).json()) == 1


async def test_start_without_driver_is_503_and_changes_nothing(api: httpx.AsyncClient) -> None:
    await api.post("/v1/vms", json={"name": "v"})
    message = _error(await api.post("/v1/vms/v/start"), 503, "unavailable")
    assert message == "no VMM driver available: none in this test"
    assert (await api.get("/v1/vms/v")).json()["state"] == "created"
    assert len((await api.get("/v1/vms/v/history")).json()) == 1


async def test_stop_of_vm_without_process_is_409(api: httpx.AsyncClient) -> None:
    await api.post("/v1/vms", json={"name": "v"})
    assert "nothing to stop" in _error(await api.post("/v1/vms/v/stop"), 409, "invalid_state")


async def test_unknown_vm_is_404_everywhere(api: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/vms/ghost"),
        ("DELETE", "/v1/vms/ghost"),
        ("POST", "/v1/vms/ghost/start"),
        ("POST", "/v1/vms/ghost/stop"),
        ("GET", "/v1/vms/ghost/history"),
        ("GET", "/v1/vms/ghost/logs"),
        ("GET", "/v1/vms/ghost/tags"),
    ]:
        _error(await api.request(method, path), 404, "not_found")


async def test_history_logs_tags(api: httpx.AsyncClient, tmp_path: Path) -> None:
    vm = (await api.post("/v1/vms", json={"name": "h"})).json()
    history = (await api.get("/v1/vms/h/history")).json()
    assert [(c["from_state"], c["to_state"], c["reason"]) for c in history] == [(None, "created", "created")]

    assert (await api.get("/v1/vms/h/logs")).json() == {"vm_id": vm["id"], "lines": []}
    log = tmp_path / "state" / "vms" / vm["id"] / "console.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    assert (await api.get("/v1/vms/h/logs", params={"tail": 2})).json()["lines"] == ["line 8", "line 9"]
    assert len((await api.get("/v1/vms/h/logs")).json()["lines"]) == 10
    _error(await api.get("/v1/vms/h/logs", params={"tail": 0}), 422, "invalid")

    r = await api.post("/v1/vms/h/tags", json={"tags": ["x", "y", "x"]})
    assert r.json() == ["x", "y"]
    assert (await api.get("/v1/vms/h/tags")).json() == ["x", "y"]
    assert (await api.delete("/v1/vms/h/tags/x")).status_code == 204
    assert (await api.get("/v1/vms/h/tags")).json() == ["y"]
    _error(await api.post("/v1/vms/h/tags", json={"tags": []}), 422, "invalid")
    _error(await api.post("/v1/vms/h/tags", json={"tags": ["no/slash"]}), 422, "invalid")

    assert (await api.delete("/v1/vms/h")).status_code == 204
    assert not log.exists()


async def test_settings(api: httpx.AsyncClient) -> None:
    listed = (await api.get("/v1/settings")).json()
    keys = [s["key"] for s in listed]
    assert keys == sorted(keys)
    assert {"default_image", "default_kernel", "default_vcpus", "default_mem_mib", "vmm"} <= set(keys)
    assert (await api.get("/v1/settings/vmm")).json()["value"] == "auto"
    r = await api.put("/v1/settings/vmm", json={"value": "qemu"})
    assert r.json()["value"] == "qemu"
    assert (await api.get("/v1/settings/vmm")).json() == {**r.json(), "default": "auto"}
    _error(await api.put("/v1/settings/vmm", json={"value": "xen"}), 422, "invalid")
    _error(await api.put("/v1/settings/default_vcpus", json={"value": 99}), 422, "invalid")
    _error(await api.put("/v1/settings/vmm", json={"value": "qemu", "x": 1}), 422, "invalid")
    _error(await api.get("/v1/settings/colour"), 404, "not_found")
    _error(await api.put("/v1/settings/colour", json={"value": 1}), 404, "not_found")
    assert (await api.get("/v1/settings/vmm")).json()["value"] == "qemu"


async def test_openapi_lists_every_route(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in [
        "/v1/health",
        "/v1/vms",
        "/v1/vms/{ref}",
        "/v1/vms/{ref}/start",
        "/v1/vms/{ref}/stop",
        "/v1/vms/{ref}/history",
        "/v1/vms/{ref}/logs",
        "/v1/vms/{ref}/tags",
        "/v1/vms/{ref}/tags/{tag}",
        "/v1/settings",
        "/v1/settings/vmm",
    ]:
        assert path in paths, path
    assert "409" in paths["/v1/vms"]["post"]["responses"]


async def test_unknown_route_uses_error_shape(api: httpx.AsyncClient) -> None:
    _error(await api.get("/v1/nothing"), 404, "not_found")
    _error(await api.put("/v1/vms"), 405, "method_not_allowed")


async def test_tcp_token(tmp_path: Path) -> None:
    token = "s3cret-token-0123456789"
    # With an explicit port the ASGI scope's server is (host, port), as for a TCP listener.
    async with make_app(tmp_path, token=token, base_url="http://nexusd:8080") as api:
        _error(await api.get("/v1/health"), 401, "unauthorized")
        _error(await api.get("/v1/health", headers={"authorization": "Bearer wrong"}), 401, "unauthorized")
        r = await api.get("/v1/health", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 200


async def test_vm_listing_is_current_after_every_change(api: httpx.AsyncClient) -> None:
    """The serialised listing is kept between requests (api/cache.py) and rebuilt after every change."""

    async def names(**params: str) -> list[str]:
        response = await api.get("/v1/vms", params=params)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        return [vm["name"] for vm in response.json()]

    assert await names() == []
    assert (await api.post("/v1/vms", json={"name": "one", "tags": ["a"]})).status_code == 201
    assert await names() == ["one"] and await names() == ["one"]
    assert (await api.post("/v1/vms", json={"name": "two"})).status_code == 201
    assert await names() == ["one", "two"] and await names(tag="a") == ["one"]
    assert (await api.post("/v1/vms/two/tags", json={"tags": ["a"]})).status_code == 200
    assert await names(tag="a") == ["one", "two"]
    assert (await api.delete("/v1/vms/one/tags/a")).status_code == 204
    assert await names(tag="a") == ["two"]
    assert (await api.delete("/v1/vms/one")).status_code == 204
    assert await names() == ["two"] and await names(state="created") == ["two"]
    listed = (await api.get("/v1/vms")).json()[0]
    assert listed == (await api.get("/v1/vms/two")).json()  # the same document as one VM's
