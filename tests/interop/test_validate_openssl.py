"""The certificate validator agrees with ``openssl verify`` on the same certificates.

For each certificate of a small development PKI (good, expired, weak, wrong usage,
revoked, untrusted, SHA-1 signed) our verdict (configured CRL files, hard-fail) and
OpenSSL's (``-crl_check_all`` with the same CRLs, ``-purpose`` for the usage,
``-auth_level 2`` for RSA >= 2048 and no SHA-1) must both accept or both refuse.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.pki.dev import DevPki, init_dev_pki
from gateway.smime.types import CertStatus, Purpose
from gateway.smime.validate import CertificateValidator
from tests.peers.procs import make_temp_dir, require_binary

pytestmark = pytest.mark.peer

USER = "alice.martin@chu-a.test"
NOW = datetime.now(UTC)
OPENSSL_PURPOSE = {
    Purpose.SMIME_SIGN: "smimesign",
    Purpose.SMIME_ENCRYPT: "smimeencrypt",
    Purpose.TLS_SERVER: "sslserver",
    Purpose.TLS_CLIENT: "sslclient",
}


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    purpose: Purpose
    expected: CertStatus


@pytest.fixture(scope="module")
def pki() -> Iterator[DevPki]:
    directory = make_temp_dir("mv-valossl-")
    try:
        yield init_dev_pki(directory / "pki", users=(USER,), servers=("mx.chu-a.test",))
    finally:
        shutil.rmtree(directory)


def _self_signed(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stranger")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(Encoding.PEM))
    return path


def _sha1_signed(openssl: str, pki: DevPki, directory: Path) -> Path:
    extensions = directory / "sha1.cnf"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage=emailProtection\nsubjectAltName=email:{USER}\n"
    )
    key, csr, out = directory / "sha1.key", directory / "sha1.csr", directory / "sha1.crt"
    subprocess.run(
        [
            openssl,
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=SHA1",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [
            openssl,
            "x509",
            "-req",
            "-sha1",
            "-days",
            "30",
            "-set_serial",
            "0x51a1",
            "-in",
            str(csr),
            "-CA",
            str(pki.ca_cert("personnes")),
            "-CAkey",
            str(pki.ca_key("personnes")),
            "-extfile",
            str(extensions),
            "-out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


@pytest.fixture(scope="module")
def cases(pki: DevPki) -> list[Case]:
    openssl = require_binary("openssl")
    odd = pki.directory / "odd"
    odd.mkdir()
    revoked = pki.issue_user(USER, path=odd / "revoked.crt")
    pki.revoke(revoked)
    return [
        Case("good-sign", pki.user_cert(USER, "sign"), Purpose.SMIME_SIGN, CertStatus.VALID),
        Case("good-enc", pki.user_cert(USER, "enc"), Purpose.SMIME_ENCRYPT, CertStatus.VALID),
        Case(
            "sign-for-enc",
            pki.user_cert(USER, "sign"),
            Purpose.SMIME_ENCRYPT,
            CertStatus.WRONG_USAGE,
        ),
        Case("server", pki.server_cert("mx.chu-a.test"), Purpose.TLS_SERVER, CertStatus.VALID),
        Case(
            "server-for-smime",
            pki.server_cert("mx.chu-a.test"),
            Purpose.SMIME_SIGN,
            CertStatus.WRONG_USAGE,
        ),
        Case(
            "user-for-tls", pki.user_cert(USER, "sign"), Purpose.TLS_CLIENT, CertStatus.WRONG_USAGE
        ),
        Case(
            "expired",
            pki.issue_user(
                USER,
                not_before=NOW - timedelta(days=9),
                not_after=NOW - timedelta(days=1),
                path=odd / "expired.crt",
            ),
            Purpose.SMIME_SIGN,
            CertStatus.EXPIRED,
        ),
        Case(
            "rsa-1024",
            pki.issue_user(USER, rsa_bits=1024, path=odd / "small.crt"),
            Purpose.SMIME_SIGN,
            CertStatus.WEAK,
        ),
        Case(
            "server-auth-only",
            pki.issue_user(USER, eku=("serverAuth",), path=odd / "tls-only.crt"),
            Purpose.SMIME_SIGN,
            CertStatus.WRONG_USAGE,
        ),
        Case("revoked", revoked, Purpose.SMIME_SIGN, CertStatus.REVOKED),
        Case(
            "self-signed",
            _self_signed(odd / "stranger.crt"),
            Purpose.SMIME_SIGN,
            CertStatus.UNTRUSTED,
        ),
        Case("sha1", _sha1_signed(openssl, pki, odd), Purpose.SMIME_SIGN, CertStatus.WEAK),
    ]


def _openssl_accepts(openssl: str, pki: DevPki, case: Case) -> tuple[bool, str]:
    leaf_only = case.path.with_suffix(".leaf.pem")
    first = x509.load_pem_x509_certificates(case.path.read_bytes())[0]
    leaf_only.write_bytes(first.public_bytes(Encoding.PEM))
    completed = subprocess.run(
        [
            openssl,
            "verify",
            "-CAfile",
            str(pki.root_cert),
            "-untrusted",
            str(pki.intermediates),
            "-crl_check_all",
            "-CRLfile",
            str(pki.crl("personnes")),
            "-CRLfile",
            str(pki.crl("serveurs")),
            "-CRLfile",
            str(pki.crl("root")),
            "-purpose",
            OPENSSL_PURPOSE[case.purpose],
            "-auth_level",
            "2",
            str(leaf_only),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return completed.returncode == 0, completed.stdout + completed.stderr


def test_our_verdicts_match_openssl_verify(pki: DevPki, cases: list[Case]) -> None:
    openssl = require_binary("openssl")
    validator = CertificateValidator.from_files(
        [pki.root_cert],
        [pki.intermediates],
        [pki.crl("personnes"), pki.crl("serveurs"), pki.crl("root")],
        "hard-fail",
        None,
    )
    disagreements = []
    for case in cases:
        certificate = x509.load_pem_x509_certificates(case.path.read_bytes())[0]
        ours = validator.validate(certificate, purpose=case.purpose)
        theirs, output = _openssl_accepts(openssl, pki, case)
        assert ours.status is case.expected, (case.name, ours.reason)
        if ours.valid != theirs:
            disagreements.append(f"{case.name}: ours {ours.status.value}, openssl: {output}")
    assert not disagreements, disagreements
