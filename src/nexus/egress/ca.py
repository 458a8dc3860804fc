"""The Nexus egress CA: a key and self-signed certificate made once in the state dir (guests trust it), and the
short-lived leaf certificates the proxy presents for hosts whose requests get a secret."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nexus.domain.errors import Invalid

KEY_FILE = "ca.key"
CERT_FILE = "ca.pem"
CA_NAME = "Nexus egress CA"
CA_DAYS = 3650
LEAF_DAYS = 7
LEAF_RENEW = datetime.timedelta(days=1)  # a cached leaf this close to its end is made again
LEAF_CACHE = 256
CLOCK_SKEW = datetime.timedelta(hours=1)  # a guest's clock may lag the host's


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """``path`` made 0600 whole or not at all (written beside it, then renamed)."""
    part = path.with_name(f".{path.name}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    part.rename(path)


def _key_usage(*, sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign,
        crl_sign=sign,
        encipher_only=False,
        decipher_only=False,
    )


class NexusCA:
    """The CA's key and certificate, and a bounded in-memory cache of leaf contexts, one per host."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._cert = cert
        self._leaves: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()

    @classmethod
    def load_or_create(cls, directory: Path) -> NexusCA:
        """The CA in ``directory`` (0700; ca.key and ca.pem 0600), made there when neither file exists. A file
        that is missing, unreadable or not the other's pair is an error: a CA guests trust is never replaced."""
        key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
        if not key_path.exists() and not cert_path.exists():
            return cls._create(directory)
        fix = f"remove {directory} to make a new CA (guests then trust the new one from their next start)"
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise Invalid(f"egress CA in {directory} cannot be read ({exc}): {fix}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise Invalid(f"egress CA in {directory}: {KEY_FILE} is not the key of {CERT_FILE}: {fix}")
        return cls(key, cert)

    @classmethod
    def _create(cls, directory: Path) -> NexusCA:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # the key first: a cert with no key beside it is never left for the next start to trust
        _write_private(directory / KEY_FILE, pem_key)
        _write_private(directory / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def pem_bytes(self) -> bytes:
        """The certificate guests add to their trust store."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate, as ``AB:CD:...``."""
        return self._cert.fingerprint(hashes.SHA256()).hex(":").upper()

    def leaf(self, host: str) -> ssl.SSLContext:
        """A server context presenting a leaf for ``host`` (a DNS name or an IP), HTTP/1.1 only."""
        host = host.lower().rstrip(".")
        cached = self._leaves.get(host)
        if cached is not None and cached[1] - _now() > LEAF_RENEW:
            self._leaves.move_to_end(host)
            return cached[0]
        context, until = self._make_leaf(host)
        self._leaves[host] = (context, until)
        self._leaves.move_to_end(host)
        while len(self._leaves) > LEAF_CACHE:
            self._leaves.popitem(last=False)
        return context

    def _make_leaf(self, host: str) -> tuple[ssl.SSLContext, datetime.datetime]:
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = _now()
        until = now + datetime.timedelta(days=LEAF_DAYS)
        ca_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ) + cert.public_bytes(serialization.Encoding.PEM)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])  # no h2: the proxy reads HTTP/1.1 messages inside
        # ssl loads a chain only from a path: a memory file keeps the leaf's key off every disk
        fd = os.memfd_create("nexus-egress-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return context, until
