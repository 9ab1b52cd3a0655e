"""Helpers of the certificate validator tests (see conftest.py for the fixtures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from gateway.pki.builders import PrivateKey
from gateway.pki.dev import DevPki, load_private_key
from gateway.smime.revocation import RevocationSettings, utc_now
from gateway.smime.validate import CertificateValidator
from tests.peers.http_server import HttpServer
from tests.smime.validate.responder import OcspResponder

USERS = ("alice.martin@chu-a.test", "claire.durand@clinique-b.test")
SERVER = "mx.chu-a.test"
CAS = ("root", "personnes", "serveurs")


class FakeClock:
    """A clock that only moves when told (``advance``); starts at the real now."""

    def __init__(self) -> None:
        self.current = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


@dataclass
class Site:
    """What the loopback server publishes for the PKI (reset before each test)."""

    server: HttpServer
    pki: DevPki
    responders: dict[str, OcspResponder] = field(default_factory=dict)

    def crl_path(self, ca: str) -> str:
        return f"/crl/{ca}.crl"

    def publish_crls(self) -> None:
        """Serve the PKI's current CRL files, DER-encoded."""
        for ca in CAS:
            crl = x509.load_pem_x509_crl(self.pki.crl(ca).read_bytes())
            self.server.serve(self.crl_path(ca), crl.public_bytes(serialization.Encoding.DER))

    def hits(self, path: str) -> int:
        return self.server.hits(path)

    def ca(self, name: str) -> tuple[x509.Certificate, PrivateKey]:
        certificate = x509.load_pem_x509_certificate(self.pki.ca_cert(name).read_bytes())
        return certificate, load_private_key(self.pki.ca_key(name))

    def answer_ocsp(self, request_der: bytes) -> bytes:
        """Dispatch to the responder of the CA named by the request's issuer key hash."""
        request = ocsp.load_der_ocsp_request(request_der)
        for responder in self.responders.values():
            key_hash = x509.SubjectKeyIdentifier.from_public_key(
                responder.issuer.public_key()
            ).digest
            if request.issuer_key_hash == key_hash:
                return responder(request_der)
        return ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.UNAUTHORIZED
        ).public_bytes(serialization.Encoding.DER)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def anchors_of(pki: DevPki) -> list[x509.Certificate]:
    return [load_cert(pki.root_cert)]


def intermediates_of(pki: DevPki) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pki.intermediates.read_bytes())


def fingerprint(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


def make_validator(
    pki: DevPki,
    *,
    revocation: str = "off",
    cache_dir: Path | None = None,
    clock: FakeClock | None = None,
    crls: tuple[bytes | Path, ...] = (),
    settings: RevocationSettings | None = None,
) -> CertificateValidator:
    """A validator trusting the PKI's root, knowing its intermediates."""
    return CertificateValidator(
        anchors_of(pki),
        intermediates_of(pki),
        crls,
        revocation,
        cache_dir,
        settings=settings,
        clock=clock or utc_now,
    )
