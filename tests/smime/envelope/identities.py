"""Certificates and keys for the envelope tests, made once per session with the dev PKI.

Shared by ``tests/smime/envelope`` and the ``tests/interop/test_envelope_*`` modules:
each declares an ``envelope_pki`` fixture that calls ``shared_envelope_pki`` (one PKI per
session, whichever module asks first).

``envelope_pki`` gives RSA encryption certificates for alice, bob and claire (bob's
and claire's come from ``init_dev_pki``), alice's *renewed* certificate (new key, same
address), EC P-256 encryption certificates for erin and frank (keyAgreement), and an
RSA certificate without SubjectKeyIdentifier for the "ski impossible" case.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.pki.dev import DevPki, init_dev_pki
from gateway.smime.recipient_infos import DecryptionKey

ALICE = "alice.martin@chu-a.test"
BOB = "bruno.petit@chu-a.test"
CLAIRE = "claire.durand@clinique-b.test"
ERIN = "erin.ec@chu-a.test"
FRANK = "frank.ec@clinique-b.test"


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def load_key(path: Path) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key


@dataclass
class EnvelopePki:
    """Paths and loaded objects of the test identities."""

    pki: DevPki
    cert_paths: dict[str, Path] = field(default_factory=dict)

    def cert(self, name: str) -> x509.Certificate:
        return load_cert(self.cert_paths[name])

    def key_path(self, name: str) -> Path:
        return self.cert_paths[name].with_suffix(".key")

    def key(self, name: str) -> DecryptionKey:
        return DecryptionKey(self.cert(name), load_key(self.key_path(name)))


_SHARED: list[EnvelopePki] = []


def shared_envelope_pki(tmp_path_factory: pytest.TempPathFactory) -> EnvelopePki:
    """The session's test identities (made on first use under pytest's temp dir)."""
    if not _SHARED:
        _SHARED.append(_make(tmp_path_factory.mktemp("envelope-pki") / "pki"))
    return _SHARED[0]


def _make(directory: Path) -> EnvelopePki:
    pki = init_dev_pki(directory, users=(ALICE, BOB, CLAIRE), servers=())
    result = EnvelopePki(pki)
    for address in (ALICE, BOB, CLAIRE):
        result.cert_paths[address] = pki.user_cert(address, "enc")
    result.cert_paths["alice-renewed"] = pki.issue_user(
        ALICE, "enc", path=directory / "users" / "alice-renewed.enc.crt"
    )
    for address in (ERIN, FRANK):
        result.cert_paths[address] = pki.issue_user(
            address, "enc", ec=True, key_usage=("keyAgreement",)
        )
    return result


def self_signed(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, with_ski: bool = True
) -> x509.Certificate:
    """A minimal self-signed encryption certificate for ``key`` (odd cases the dev PKI
    does not make: no SubjectKeyIdentifier, P-384)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "envelope test")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
    )
    if with_ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    return builder.sign(key, hashes.SHA256())
