"""Network options through the REST API (ASGI transport, real SQLite): leases at create, published ports,
--no-network, exhaustion as a clear 503, and bad input refused without changing anything. Nothing here touches
links or rules: those are made at start (see tests/e2e/test_network_e2e.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_api import _error, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with make_app(tmp_path) as client:
        yield client


async def test_create_leases_an_address_and_publishes_ports(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/vms", json={"name": "web", "publish": ["8080:80", "5353:53/udp"]})
    assert r.status_code == 201, r.text
    net = r.json()["network"]
    assert (net["address"], net["gateway"], net["prefix_len"]) == ("10.77.0.2", "10.77.0.1", 24)
    assert net["ports"] == ["8080:80/tcp", "5353:53/udp"] and net["mac"].startswith("02:")
    listed = (await api.get("/v1/vms")).json()
    assert listed[0]["network"]["address"] == "10.77.0.2"
    plain = (await api.post("/v1/vms", json={"name": "db", "network": False})).json()
    assert plain["network"] is None


async def test_bad_network_input_changes_nothing(api: httpx.AsyncClient) -> None:
    await api.post("/v1/vms", json={"name": "web", "publish": ["8080:80"]})
    clash = await api.post("/v1/vms", json={"name": "other", "publish": ["8080:81"]})
    assert "published by VM web" in _error(clash, 409, "conflict")
    assert "HOSTPORT:GUESTPORT" in _error(
        await api.post("/v1/vms", json={"name": "x", "publish": ["80"]}), 422, "invalid"
    )
    no_nic = await api.post("/v1/vms", json={"name": "y", "network": False, "publish": ["90:90"]})
    assert "publish needs the VM on the network" in _error(no_nic, 422, "invalid")
    assert [vm["name"] for vm in (await api.get("/v1/vms")).json()] == ["web"]


async def test_exhausted_subnet_is_503_and_removal_frees_an_address(api: httpx.AsyncClient) -> None:
    assert (await api.put("/v1/settings/network_subnet", json={"value": "10.9.0.0/29"})).status_code == 200
    for i in range(5):
        assert (await api.post("/v1/vms", json={"name": f"vm{i}"})).status_code == 201
    full = await api.post("/v1/vms", json={"name": "late"})
    assert "no free address in 10.9.0.0/29" in _error(full, 503, "unavailable")
    assert len((await api.get("/v1/vms")).json()) == 5
    assert (await api.delete("/v1/vms/vm2")).status_code == 204
    again = await api.post("/v1/vms", json={"name": "late"})
    assert again.status_code == 201 and again.json()["network"]["address"] == "10.9.0.4"


async def test_network_settings_are_validated(api: httpx.AsyncClient) -> None:
    bad = await api.put("/v1/settings/network_subnet", json={"value": "10.0.0.1/24"})
    assert "host bits" in _error(bad, 422, "invalid")
    assert (await api.put("/v1/settings/dns_servers", json={"value": ["192.0.2.1"]})).json()["value"] == ["192.0.2.1"]
    _error(await api.put("/v1/settings/dns_servers", json={"value": "8.8.8.8"}), 422, "invalid")
