"""``sign_der`` gives, octet for octet, what it gave before its per-signer cache.

The expected SHA-256 digests below were computed with ``gateway.smime.sign`` as it was
before the per-signer cache (every structure encoded per message), from fixed inputs:
the RFC 9216 sample certificates and keys (``tests/data/rfc9216``), fixed elliptic-curve
keys with certificates signed by Alice's RSA key (RSA PKCS#1 v1.5 and Ed25519 signatures
are deterministic, so each certificate and each signature comes out the same every
time), and a frozen signing time. RSA PKCS#1 v1.5 and Ed25519 outputs are compared
whole. RSASSA-PSS is randomised, so its signature (the last 256 octets of the DER, since
the SignerInfo's signature is the last field of the structure) is left out. ECDSA is
randomised too and its length varies, so the signature is replaced by a stand-in
computed from the signed attributes; everything around it is compared whole.

Every case is signed twice in a row and interleaved with the other signers, chains,
encryption certificates and capability lists, so a cache entry answering for the wrong
inputs would show here. The key/certificate match stays checked after a cache hit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from gateway.smime import sign as sign_module
from gateway.smime.capabilities import (
    AES128_CBC,
    AES256_GCM,
    DEFAULT_CAPABILITIES,
    SmimeCapability,
)
from gateway.smime.sign import sign_der
from gateway.smime.types import SignError

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc9216"
UTC_MOMENT = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
LATE_MOMENT = datetime(2050, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)  # GeneralizedTime
OFFSET_MOMENT = datetime(2026, 6, 1, 23, 30, tzinfo=timezone(timedelta(hours=5)))
CONTENT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nThis is a test message.\r\n"
PSS_SIGNATURE_LENGTH = 256  # RSA 2048


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((DATA / name).read_bytes())


def _key(name: str) -> object:
    return serialization.load_pem_private_key((DATA / name).read_bytes(), password=None)


def _ec_identity(
    curve: ec.EllipticCurve, secret: int, serial: int
) -> tuple[x509.Certificate, object]:
    """A fixed EC key and a fixed certificate for it, issued with Alice's RSA key."""
    key = ec.derive_private_key(secret, curve)
    issuer = _cert("alice.sign.crt")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"golden {curve.name}")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2036, 1, 1, tzinfo=UTC))
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(f"{curve.name}@smime.example")]), False
        )
        .sign(_key("alice.sign.key"), hashes.SHA256())  # type: ignore[arg-type]
    )
    return certificate, key


@dataclass(frozen=True)
class Case:
    name: str
    cert: x509.Certificate
    key: object
    chain: Sequence[x509.Certificate] = ()
    detached: bool = True
    capabilities: Sequence[SmimeCapability] | None = DEFAULT_CAPABILITIES
    encryption_cert: x509.Certificate | None = None
    signing_time: datetime = UTC_MOMENT
    rsa_pss: bool = False

    def sign(self) -> bytes:
        return sign_der(
            CONTENT,
            self.cert,
            self.key,
            self.chain,
            detached=self.detached,
            capabilities=self.capabilities,
            encryption_cert=self.encryption_cert,
            signing_time=self.signing_time,
            rsa_pss=self.rsa_pss,
        )

    def compared(self, der: bytes) -> bytes:
        randomised = self.rsa_pss and isinstance(self.key, rsa.RSAPrivateKey)
        return der[:-PSS_SIGNATURE_LENGTH] if randomised else der


def cases() -> list[Case]:
    alice, alice_key = _cert("alice.sign.crt"), _key("alice.sign.key")
    carlos, carlos_key = _cert("carlos.sign.crt"), _key("carlos.sign.key")
    rsa_ca, ed_ca = _cert("ca.rsa.crt"), _cert("ca.25519.crt")
    cross = _cert("ca.25519.cross.crt")
    p256 = _ec_identity(ec.SECP256R1(), 0x5EED_0256, 256)
    p384 = _ec_identity(ec.SECP384R1(), 0x5EED_0384, 384)
    p521 = _ec_identity(ec.SECP521R1(), 0x5EED_0521, 521)
    one_cbc = [SmimeCapability(AES128_CBC)]
    return [
        Case("alice bare", alice, alice_key),
        Case("alice ca", alice, alice_key, [rsa_ca]),
        Case("alice ca cross", alice, alice_key, [rsa_ca, cross]),
        Case("alice dup chain", alice, alice_key, [alice, rsa_ca, rsa_ca]),
        Case("alice opaque", alice, alice_key, [rsa_ca], detached=False),
        Case("alice enc", alice, alice_key, [rsa_ca], encryption_cert=_cert("alice.enc.crt")),
        Case("alice enc self", alice, alice_key, encryption_cert=alice),
        Case("alice no caps", alice, alice_key, [rsa_ca], capabilities=None),
        Case("alice one cap", alice, alice_key, [rsa_ca], capabilities=one_cbc),
        Case("alice empty caps", alice, alice_key, capabilities=()),
        Case("alice gcm list", alice, alice_key, capabilities=[SmimeCapability(AES256_GCM)]),
        Case("alice 2050", alice, alice_key, [rsa_ca], signing_time=LATE_MOMENT),
        Case("alice +05:00", alice, alice_key, signing_time=OFFSET_MOMENT),
        Case("alice pss", alice, alice_key, [rsa_ca], rsa_pss=True),
        Case("alice pss opaque", alice, alice_key, detached=False, rsa_pss=True),
        Case("carlos ed25519", carlos, carlos_key, [ed_ca]),
        Case("carlos enc", carlos, carlos_key, [ed_ca], encryption_cert=_cert("carlos.enc.crt")),
        Case("carlos opaque", carlos, carlos_key, detached=False, rsa_pss=False),
        Case("carlos pss ignored", carlos, carlos_key, [ed_ca], rsa_pss=True),
        Case("p256", *p256, [alice, rsa_ca]),
        Case("p256 opaque no caps", *p256, detached=False, capabilities=None),
        Case("p384", *p384, [alice], encryption_cert=alice),
        Case("p521", *p521, [alice, rsa_ca], signing_time=LATE_MOMENT),
    ]


def _stand_in_for_ecdsa(real: Callable[..., bytes]) -> Callable[..., bytes]:
    def raw_signature(key: object, data: bytes, digest: str, pss: bool) -> bytes:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return hashlib.sha512(data).digest() + bytes(len(data) % 7)
        return real(key, data, digest, pss)

    return raw_signature


# SHA-256 of ``case.compared(case.sign())``, computed before the per-signer cache.
GOLDEN = {
    "alice bare": "801c2d9d1869d5927c886f9eabdf73434b6e33a7b5bd3cd6626892d28a1cffac",
    "alice ca": "ceb4e5cbc3238fb364ede18d5f96dff967fb5583f92d7191ab0bf1089495a5a4",
    "alice ca cross": "a003f15a1d83730f52bed9dda6986793d343cca22384f1c04c39ce9be5df977f",
    "alice dup chain": "ceb4e5cbc3238fb364ede18d5f96dff967fb5583f92d7191ab0bf1089495a5a4",
    "alice opaque": "28c0eeeb15adb8bee1d971026bac6855946076e21ec594bf8e3709c0cd52f414",
    "alice enc": "f2fc2ec410928a4b7b3b0edbbfd459dc6dc2dbaab61830d2ff20659b2ee1dc3c",
    "alice enc self": "67aada4eb44de602f0b7ef8734a9ee8eb57a13a4c76bf918d5594414ce793bf0",
    "alice no caps": "f9d0e79b1d665303e770c3058178bc41caf098a475908c31fc7bf7c932d4a347",
    "alice one cap": "5089d5bf9f1cfb927610e96b6c8f4420aa7bc43dac09d440875a21b210c114d1",
    "alice empty caps": "b758eec36a608d94feb52c57d96762be54dcd676f29c15f0bb4d283a6a716931",
    "alice gcm list": "8e6574d43afd7269949178a96e68c563891a9fe3e54ea7c909817fc3dece4655",
    "alice 2050": "398c656c3c258c372a0222a2d5285b27d774cd9ccfe934b4098535174d591af1",
    "alice +05:00": "5384149b751ea97c748746f461717b07c7cf8bb980813b98016e686e426dc842",
    "alice pss": "961488e8ea36ed7dbcc10779ef5cc90f391b99840e027501bea622c161fd849d",
    "alice pss opaque": "5101814a35a56f1744b0320dcf72344d290a2b5ae7e58f26321580ed03d1a6d9",
    "carlos ed25519": "a9c3ceae2bc0589f08a550070d48291fc3d0e3aceab96d5f070bce71f9a4e8a9",
    "carlos enc": "d4b02a2b11fd23b773f40377a83045ae04e74d742d6d0d8e22e2955c2e00862b",
    "carlos opaque": "1a48f840dad04361ae245b1cc275cd76a45853a146e21aa3fcbfadaa29af7eab",
    "carlos pss ignored": "a9c3ceae2bc0589f08a550070d48291fc3d0e3aceab96d5f070bce71f9a4e8a9",
    "p256": "89e5ac59939940c7ee8b5d6dea288d7d253648dd8df8958db1ef9c5a6421a9f9",
    "p256 opaque no caps": "6c2fc95fd76efdb03654b07db92cf67f263d787a84ae0af5319f84c94b54548a",
    "p384": "f10b955194496708f2156e64680d7d8cd54b3d14d426b92dcd0bb9e6ddecb5d1",
    "p521": "cc45810dfb59011b6e79e0d80cde577a2739296b955c519faf2abd2dfb5f285c",
}


@pytest.fixture
def stand_in_ecdsa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sign_module, "_raw_signature", _stand_in_for_ecdsa(sign_module._raw_signature)
    )


@pytest.mark.usefixtures("stand_in_ecdsa")
def test_signatures_are_octet_for_octet_those_made_before_the_cache() -> None:
    every = cases()
    assert set(GOLDEN) == {case.name for case in every}
    sign_module._signer_parts.cache_clear()  # the first round encodes, the second reuses
    for _ in range(2):
        for case in every:
            first, second = case.sign(), case.sign()
            digest = hashlib.sha256(case.compared(first)).hexdigest()
            assert digest == GOLDEN[case.name], case.name
            assert case.compared(second) == case.compared(first), case.name


@pytest.mark.usefixtures("stand_in_ecdsa")
def test_an_equal_certificate_loaded_again_signs_the_same() -> None:
    first = Case("a", _cert("alice.sign.crt"), _key("alice.sign.key"), [_cert("ca.rsa.crt")])
    again = Case("b", _cert("alice.sign.crt"), _key("alice.sign.key"), [_cert("ca.rsa.crt")])
    assert first.cert is not again.cert
    assert first.sign() == again.sign()


def test_the_key_is_checked_against_the_certificate_after_a_cache_hit() -> None:
    alice, alice_key = _cert("alice.sign.crt"), _key("alice.sign.key")
    sign_der(CONTENT, alice, alice_key, signing_time=UTC_MOMENT)  # now cached
    with pytest.raises(SignError, match="does not match"):
        sign_der(CONTENT, alice, _key("carlos.sign.key"), signing_time=UTC_MOMENT)
    _, p256_key = _ec_identity(ec.SECP256R1(), 0x5EED_0256, 256)
    with pytest.raises(SignError, match="does not match"):
        sign_der(CONTENT, alice, p256_key, signing_time=UTC_MOMENT)
