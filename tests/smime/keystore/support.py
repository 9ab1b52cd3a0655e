"""Helpers of the key store and S/MIME CLI tests: a small RSA development PKI of their
own (tests issue renewed, expired and revoked certificates into it), and makers of the
files a sysadmin imports (PKCS#12 with a password, PEM key + certificate)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.pki.dev import DevPki, init_dev_pki, load_first_certificate, load_private_key

ALICE = "alice.martin@chu-a.test"
BRUNO = "bruno.petit@chu-a.test"
PASSWORD = b"correct horse battery staple"
CONTENT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nCompte rendu: RAS.\r\n"


def make_pki(directory: Path) -> DevPki:
    """RSA dev PKI with Alice and Bruno (sign + enc) and the gateway's server."""
    return init_dev_pki(directory / "pki", users=(ALICE, BRUNO), servers=("mx.chu-a.test",))


def certificate(path: Path) -> x509.Certificate:
    return load_first_certificate(path)


def intermediates(pki: DevPki) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pki.intermediates.read_bytes())


def write_p12(pki: DevPki, cert_path: Path, out: Path, password: bytes | None = PASSWORD) -> Path:
    """A PKCS#12 of the certificate at ``cert_path`` (key next to it), with the chain."""
    key = load_private_key(cert_path.with_suffix(".key"))
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    out.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"test", key, certificate(cert_path), intermediates(pki), encryption
        )
    )
    return out


def write_pem(cert_path: Path, out: Path, key_path: Path | None = None) -> Path:
    """Key then certificate in one PEM file (what a key store file holds)."""
    key = (key_path or cert_path.with_suffix(".key")).read_bytes()
    out.write_bytes(key + cert_path.read_bytes())
    return out


def renewed(pki: DevPki, address: str, purpose: str, directory: Path, **kwargs: object) -> Path:
    """A new certificate, with a new key, for ``address``: the renewal of its old one.
    Issued one second later than now so that it is strictly the newest."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{address}.{purpose}.renewed.crt"
    now = datetime.now(UTC).replace(microsecond=0)
    kwargs.setdefault("not_before", now - timedelta(minutes=30))
    return pki.issue_user(address, purpose, path=path, **kwargs)  # type: ignore[arg-type]
