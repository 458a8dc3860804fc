"""nexus/environment in the agent: variables for what it runs from now on, and a CA bundle clients trust."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nexus.agent.environment import apply_environment
from nexus.protocol import CA_BUNDLE, CA_FILE, PROFILE_SCRIPT, JsonRpcError

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_variables_reach_the_agent_and_login_shells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NEXUS_T_KEY", "http_proxy"):
        monkeypatch.setenv(name, "")  # so that the test's process gets its own environment back
    done = apply_environment(
        {"set": {"NEXUS_T_KEY": "nexus-secret:KEY", "http_proxy": "http://10.77.0.1:3128"}}, tmp_path
    )
    assert done == {"set": ["NEXUS_T_KEY", "http_proxy"], "ca_bundle": None}
    assert os.environ["NEXUS_T_KEY"] == "nexus-secret:KEY"
    profile = (tmp_path / PROFILE_SCRIPT.lstrip("/")).read_text()
    assert "export NEXUS_T_KEY=nexus-secret:KEY\n" in profile and "export http_proxy=http://10.77.0.1:3128" in profile


def test_the_ca_joins_the_systems_bundle_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        monkeypatch.setenv(name, "")  # restored after the test
    system = tmp_path / "etc/ssl/certs/ca-certificates.crt"
    system.parent.mkdir(parents=True)
    system.write_text("-----BEGIN CERTIFICATE-----\nSYSTEM\n-----END CERTIFICATE-----\n")
    for _ in range(2):
        done = apply_environment({"set": {}, "ca_pem": PEM}, tmp_path)
    bundle = (tmp_path / CA_BUNDLE.lstrip("/")).read_text()
    assert "SYSTEM" in bundle and bundle.count("MIIB") == 1
    assert (tmp_path / CA_FILE.lstrip("/")).read_text() == PEM
    assert done["ca_bundle"] == CA_BUNDLE and os.environ["SSL_CERT_FILE"] == CA_BUNDLE
    assert os.environ["NODE_EXTRA_CA_CERTS"] == CA_FILE


@pytest.mark.parametrize(
    "params", [[], {"set": []}, {"set": {"1BAD": "x"}}, {"set": {"A": 1}}, {"ca_pem": "not a pem"}, {"ca_pem": 3}]
)
def test_bad_params_are_refused(tmp_path: Path, params: object) -> None:
    with pytest.raises(JsonRpcError):
        apply_environment(params, tmp_path)
    assert not (tmp_path / PROFILE_SCRIPT.lstrip("/")).exists()
