"""The HTTP edge's contract, through the ASGI transport on a real SQLite file: strict request bodies whose limits are
the domain's, the documented error body for failures nothing mapped (with the request id of their log line), NDJSON
streams that end with an error event however the work fails, and 405 with ``Allow``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus.api import create_app
from nexus.api.deps import Services
from nexus.daemon.wiring import wire
from nexus.domain import Layout, Progress
from nexus.domain.settings import SETTINGS, VMM_CHOICES
from nexus.domain.validation import (
    DRIVE_SIZE_MIB_RANGE,
    IMAGE_SIZE_MIB_RANGE,
    KERNEL_REF_RE,
    MEM_MIB_RANGE,
    NAME_RE,
    POOL_SIZE_RANGE,
    TAG_RE,
    VCPUS_RANGE,
)
from nexus.store import open_database
from nexus.workspaces import probe_backend

pytestmark = pytest.mark.anyio


@pytest.fixture
def services(tmp_path: Path) -> Services:
    conn = open_database(tmp_path / "nexus.db")
    layout = Layout(tmp_path / "state", tmp_path / "run")
    services, _ = wire(conn, layout, None, "none in this test", probe_backend(layout.state_dir))
    return services


@pytest.fixture
async def api(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://nexusd") as client:
        yield client


def _error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    detail: dict[str, str] = body["error"]
    return detail


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/vms", {"name": "a", "vcpus": "2"}, "vcpus"),
        ("/v1/vms", {"name": "a", "vcpus": True}, "vcpus"),
        ("/v1/vms", {"name": "a", "vcpus": 2.0}, "vcpus"),
        ("/v1/vms", {"name": "a", "mem_mib": "512"}, "mem_mib"),
        ("/v1/vms", {"name": "a", "network": "false"}, "network"),
        ("/v1/vms", {"name": "a", "network": 0}, "network"),
        ("/v1/drives", {"name": "d", "size_mib": "64"}, "size_mib"),
        ("/v1/drives", {"name": "d", "size_mib": False}, "size_mib"),
        ("/v1/drives/d/resize", {"size_mib": 64.0}, "size_mib"),
        ("/v1/vms/a/exec", {"command": "true", "timeout_s": "5"}, "timeout_s"),
    ],
)
async def test_numbers_and_booleans_are_strict(
    api: httpx.AsyncClient, path: str, body: dict[str, object], field: str
) -> None:
    message = _error(await api.post(path, json=body), 422, "invalid")["message"]
    assert message.startswith(f"{field}: "), message
    assert (await api.get("/v1/vms")).json() == [] and (await api.get("/v1/drives")).json() == []


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/vms", {"name": "Bad_Name"}, "invalid name 'Bad_Name': use 1-63 lowercase letters"),
        ("/v1/vms", {"name": "a", "vcpus": VCPUS_RANGE[1] + 1}, "vcpus must be an integer from 1 to 32, got 33"),
        ("/v1/vms", {"name": "a", "tags": ["ok", "no spaces"]}, "invalid tag 'no spaces'"),
        ("/v1/drives", {"name": "d", "size_mib": 8}, "size_mib must be an integer from 16 to 1048576, got 8"),
        ("/v1/vms/a/clone", {"name": "-x"}, "invalid name '-x'"),
    ],
)
async def test_limits_are_refused_in_the_domain_s_words(
    api: httpx.AsyncClient, path: str, body: dict[str, object], message: str
) -> None:
    assert _error(await api.post(path, json=body), 422, "invalid")["message"].startswith(message)


async def test_the_openapi_document_carries_the_domain_s_limits(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]

    def prop(model: str, name: str) -> dict[str, Any]:
        schema: dict[str, Any] = schemas[model]["properties"][name]
        return next((s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"), schema)

    for model, name, bounds in [
        ("VmCreateOrClaim", "vcpus", VCPUS_RANGE),
        ("VmCreateOrClaim", "mem_mib", MEM_MIB_RANGE),
        ("DriveCreate", "size_mib", DRIVE_SIZE_MIB_RANGE),
        ("DriveResize", "size_mib", DRIVE_SIZE_MIB_RANGE),
        ("ImageBuildIn", "size_mib", IMAGE_SIZE_MIB_RANGE),
        ("PoolIn", "size", POOL_SIZE_RANGE),
    ]:
        assert (prop(model, name)["type"], prop(model, name)["minimum"], prop(model, name)["maximum"]) == (
            "integer",
            *bounds,
        ), (model, name)
    for model in ("VmCreateOrClaim", "DriveCreate", "VmClone", "SnapshotCreate", "ImageBuildIn"):
        assert prop(model, "name")["pattern"] == NAME_RE.pattern, model
    assert prop("VmCreateOrClaim", "tags")["items"]["pattern"] == TAG_RE.pattern
    assert prop("TagsIn", "tags")["items"]["pattern"] == TAG_RE.pattern
    [version] = spec["paths"]["/v1/kernels/{version}"]["delete"]["parameters"]
    assert version["schema"]["pattern"] == KERNEL_REF_RE.pattern
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "500" in operation["responses"], (method, path)


async def test_a_405_allows_every_method_of_the_path(api: httpx.AsyncClient) -> None:
    # /v1/vms/{ref} is two routes (GET, DELETE); Starlette's own Allow would name the first one only
    r = await api.request("TRACE", "/v1/vms/web")
    _error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "DELETE, GET"
    r = await api.put("/v1/vms")
    _error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET, POST"


async def test_an_unexpected_exception_is_the_documented_500_with_the_log_s_request_id(
    api: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(services.settings, "all", broken)
    with caplog.at_level(logging.ERROR, logger="nexus.api.errors"):
        detail = _error(await api.get("/v1/settings"), 500, "internal")
    request_id = detail["request_id"]
    assert len(request_id) == 16 and request_id in detail["message"] and "RuntimeError" in detail["message"]
    assert "a bug" not in detail["message"]  # a bug's text stays in the log
    [record] = [r for r in caplog.records if request_id in r.getMessage()]
    assert "GET /v1/settings" in record.getMessage() and record.exc_info is not None
    assert (await api.get("/v1/health")).status_code == 200  # and the daemon goes on


async def test_an_oserror_before_a_stream_starts_is_a_500(
    api: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def prepare(_ref: str, _progress: Progress) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(services.vms, "prepare", prepare)
    detail = _error(await api.post("/v1/vms/web/prepare"), 500, "internal")
    assert "No space left on device" in detail["message"]  # the user can act on an OSError: it says what


async def test_an_oserror_mid_stream_ends_it_with_an_error_event(
    api: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def prepare(_ref: str, progress: Progress) -> None:
        progress("kernel", 0.5)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(services.vms, "prepare", prepare)
    with caplog.at_level(logging.ERROR, logger="nexus.api.errors"):
        r = await api.post("/v1/vms/web/prepare")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events[0] == {"event": "progress", "stage": "kernel", "fraction": 0.5}
    assert events[-1]["event"] == "error" and len(events) == 2
    error = events[-1]["error"]
    assert error["code"] == "internal" and "No space left on device" in error["message"]
    assert any(error["request_id"] in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_missing_resource_named_in_the_body_is_bad_input_not_a_missing_target(api: httpx.AsyncClient) -> None:
    # 404 would say the request's target (the drive, the VM being cloned) is gone; it is the body that is wrong
    assert (await api.post("/v1/drives", json={"name": "data", "size_mib": 16})).status_code == 201
    assert (await api.post("/v1/vms", json={"name": "web"})).status_code == 201
    attach = _error(await api.post("/v1/drives/data/attach", json={"vm": "ghost"}), 422, "invalid")
    assert "ghost" in attach["message"]
    assert (await api.get("/v1/drives/data")).json()["vm_id"] is None
    copy = _error(await api.post("/v1/drives", json={"name": "copy", "image": "ghost"}), 422, "invalid")
    assert "ghost" in copy["message"]
    clone = _error(await api.post("/v1/vms/web/clone", json={"name": "web2", "snapshot": "ghost"}), 422, "invalid")
    assert "ghost" in clone["message"]
    assert [d["name"] for d in (await api.get("/v1/drives")).json()] == ["data"]
    assert [v["name"] for v in (await api.get("/v1/vms")).json()] == ["web"]
    _error(await api.post("/v1/drives/nope/attach", json={"vm": "web"}), 404, "not_found")


async def test_each_setting_documents_and_enforces_its_own_value(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    for key in SETTINGS:
        assert set(spec["paths"][f"/v1/settings/{key}"]) == {"get", "put"}, key
    assert "/v1/settings/{key}" not in spec["paths"]  # only unknown keys reach it: 404
    vcpus = spec["components"]["schemas"]["DefaultVcpusIn"]["properties"]["value"]
    assert (vcpus["type"], vcpus["minimum"], vcpus["maximum"]) == ("integer", *VCPUS_RANGE)
    assert spec["components"]["schemas"]["VmmIn"]["properties"]["value"]["enum"] == list(VMM_CHOICES)

    for key, value in [("default_vcpus", "2"), ("default_vcpus", True), ("vmm", "xen"), ("network_bridge", "")]:
        _error(await api.put(f"/v1/settings/{key}", json={"value": value}), 422, "invalid")
    # what a schema cannot say is still the setting's own check: not a private range
    message = _error(await api.put("/v1/settings/network_subnet", json={"value": "8.8.0.0/16"}), 422, "invalid")
    assert "not a private range" in message["message"]
    assert (await api.put("/v1/settings/default_vcpus", json={"value": 2})).json()["value"] == 2
    assert (await api.put("/v1/settings/dns_servers", json={"value": ["1.1.1.1"]})).json()["value"] == ["1.1.1.1"]
    _error(await api.put("/v1/settings/colour", json={"value": 1}), 404, "not_found")
