"""Identities for the sign/verify tests (unit and interop), made with the dev PKI.

``make_rsa_pki`` holds alice's signature and encryption certificates and bob's signature
certificate, plus an Ed25519 signer, a second certificate for alice's signing key (same
key, other certificate: the "swapped certificate" case) and a signer whose SAN names no
address; ``make_ec_pki`` the same people with P-256 keys. ``AcceptAll``/``Reject`` are
test doubles of the ``ChainValidator`` protocol (a unit-test double, per the brief).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.pki.dev import DevPki, init_dev_pki, load_first_certificate, load_private_key
from gateway.smime.types import CertStatus, Purpose, ValidationResult

ALICE = "alice.martin@chu-a.test"
BOB = "bruno.petit@chu-a.test"
EDDIE = "eddie.ed@chu-a.test"
NOBODY = "no.address@chu-a.test"


@dataclass
class Identity:
    address: str
    cert: x509.Certificate
    key: object
    cert_path: Path
    key_path: Path


@dataclass
class SignPki:
    pki: DevPki
    intermediates: list[x509.Certificate]
    people: dict[str, Identity] = field(default_factory=dict)
    enc: dict[str, x509.Certificate] = field(default_factory=dict)

    @property
    def root(self) -> x509.Certificate:
        return load_first_certificate(self.pki.root_cert)

    def __getitem__(self, name: str) -> Identity:
        return self.people[name]


def _identity(pki: DevPki, address: str, purpose: str = "sign") -> Identity:
    cert_path, key_path = pki.user_cert(address, purpose), pki.user_key(address, purpose)
    return Identity(
        address, load_first_certificate(cert_path), load_private_key(key_path), cert_path, key_path
    )


def _ed25519_identity(pki: DevPki, directory: Path) -> Identity:
    """An Ed25519 signer issued by the persons CA (the dev PKI only makes RSA/EC keys)."""
    issuer = load_first_certificate(pki.ca_cert("personnes"))
    issuer_key = load_private_key(pki.ca_key("personnes"))
    key = ed25519.Ed25519PrivateKey.generate()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Eddie Ed")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(EDDIE)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    cert_path = directory / "eddie.crt"
    key_path = directory / "eddie.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Identity(EDDIE, cert, key, cert_path, key_path)


def _make(directory: Path, ec: bool) -> SignPki:
    pki = init_dev_pki(directory / "pki", users=[ALICE, BOB], ec=ec)
    intermediates = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
    made = SignPki(pki, intermediates)
    for address in (ALICE, BOB):
        made.people[address] = _identity(pki, address)
        made.enc[address] = load_first_certificate(pki.user_cert(address, "enc"))
    return made


def _twin_certificate(made: SignPki, path: Path) -> x509.Certificate:
    """Alice's key under another certificate of the same DER length as hers: the swap
    test replaces her certificate's bytes in place, and a random serial one byte
    shorter (about 1 draw in 128) would break the DER instead of the signature check."""
    length = len(made[ALICE].cert.public_bytes(serialization.Encoding.DER))
    for _ in range(512):  # Alice's own may be the rare short one: then so must this be
        made.pki.issue_user(
            ALICE, "sign", path=path, not_after=datetime.now(UTC) + timedelta(days=40)
        )
        twin = load_first_certificate(path)
        if len(twin.public_bytes(serialization.Encoding.DER)) == length:
            return twin
    raise AssertionError("no certificate of the same length in 512 draws")


def make_rsa_pki(directory: Path) -> SignPki:
    made = _make(directory, ec=False)
    made.people[EDDIE] = _ed25519_identity(made.pki, directory)
    twin_path = directory / "alice-twin.crt"
    shutil.copy(made[ALICE].key_path, twin_path.with_suffix(".key"))
    made.people["alice-twin"] = Identity(
        ALICE,
        _twin_certificate(made, twin_path),
        made[ALICE].key,
        twin_path,
        twin_path.with_suffix(".key"),
    )
    nobody_path = directory / "nobody.crt"
    made.pki.issue_user(NOBODY, "sign", path=nobody_path, emails=[])
    made.people[NOBODY] = Identity(
        NOBODY,
        load_first_certificate(nobody_path),
        load_private_key(nobody_path.with_suffix(".key")),
        nobody_path,
        nobody_path.with_suffix(".key"),
    )
    return made


def make_ec_pki(directory: Path) -> SignPki:
    return _make(directory, ec=True)


@dataclass
class AcceptAll:
    """A ChainValidator double that accepts every certificate and records the calls."""

    calls: list[tuple[x509.Certificate, tuple[x509.Certificate, ...], Purpose, datetime | None]] = (
        field(default_factory=list)
    )

    def validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        purpose: Purpose = Purpose.SMIME_SIGN,
        at: datetime | None = None,
    ) -> ValidationResult:
        self.calls.append((certificate, tuple(untrusted), purpose, at))
        return ValidationResult(CertStatus.VALID, chain=(certificate,))


@dataclass
class Reject:
    """A ChainValidator double that answers one fixed failure."""

    status: CertStatus
    reason: str = "rejected by the test double"

    def validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        purpose: Purpose = Purpose.SMIME_SIGN,
        at: datetime | None = None,
    ) -> ValidationResult:
        return ValidationResult(self.status, self.reason)
