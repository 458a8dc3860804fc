"""The Nexus egress CA: made once, reused, never replaced behind the user's back; leaves per host."""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nexus.domain.errors import Invalid
from nexus.egress import ca as ca_module
from nexus.egress.ca import CA_NAME, CERT_FILE, KEY_FILE, NexusCA


def test_egress_ca_made_once_private_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "state" / "egress-ca"
    ca = NexusCA.load_or_create(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in (KEY_FILE, CERT_FILE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == [KEY_FILE, CERT_FILE]  # no .part left behind
    cert = x509.load_pem_x509_certificate(ca.pem_bytes())
    assert cert.subject.rfc4514_string() == f"CN={CA_NAME}"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), None)
    assert key.public_key() == cert.public_key()
    again = NexusCA.load_or_create(directory)
    assert again.pem_bytes() == ca.pem_bytes() and again.fingerprint == ca.fingerprint
    assert len(ca.fingerprint.split(":")) == 32


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / CERT_FILE).write_bytes(b"garbage"), "cannot be read"),
        (lambda d: (d / KEY_FILE).unlink(), "cannot be read"),
        (lambda d: (d / CERT_FILE).write_bytes(NexusCA.load_or_create(d / "other").pem_bytes()), "is not the key"),
    ],
)
def test_egress_ca_damage_is_an_error_never_replaced(tmp_path: Path, damage: object, message: str) -> None:
    directory = tmp_path / "egress-ca"
    NexusCA.load_or_create(directory)
    damage(directory)  # type: ignore[operator]
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    with pytest.raises(Invalid, match=message) as raised:
        NexusCA.load_or_create(directory)
    assert f"remove {directory}" in raised.value.message
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()} == before


def test_egress_leaf_per_host_cached_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = NexusCA.load_or_create(tmp_path / "ca")
    leaf = ca.leaf("API.test.")
    assert isinstance(leaf, ssl.SSLContext) and ca.leaf("api.test") is leaf
    monkeypatch.setattr(ca_module, "LEAF_CACHE", 2)
    ca.leaf("b.test")
    ca.leaf("api.test")  # used again: the oldest is now b.test
    ca.leaf("c.test")
    assert ca.leaf("api.test") is leaf
    assert list(ca._leaves) == ["c.test", "api.test"]


def _handshake(server: ssl.SSLContext, ca_pem: bytes, name: str) -> x509.Certificate:
    """A TLS handshake in memory between ``server`` and a client trusting ``ca_pem`` alone, checking ``name``."""
    client_ctx = ssl.create_default_context(cadata=ca_pem.decode())
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    der = client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.parametrize("host", ["api.test", "10.0.0.5"])
def test_egress_leaf_verifies_for_its_host_only(tmp_path: Path, host: str) -> None:
    ca = NexusCA.load_or_create(tmp_path / "ca")
    cert = _handshake(ca.leaf(host), ca.pem_bytes(), host)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if host[0].isdigit():
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(host)]
    else:
        assert san.get_values_for_type(x509.DNSName) == [host]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca.leaf(host), ca.pem_bytes(), "elsewhere.test")
