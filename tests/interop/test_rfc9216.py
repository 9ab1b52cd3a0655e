"""The RFC 9216 example certificates and keys (``tests/data/rfc9216``) through our
engine, and through OpenSSL for the signatures.

What passes: parsing every certificate; path validation of Alice's and Bob's RSA
certificates under the RSA sample CA (signing and encryption certificates each for
their own purpose only); signing with Alice's RSA key (detached and opaque) verified by
us and by ``openssl cms``, and OpenSSL's signature with that key verified by us (also
through ``missive smime verify``); encryption to Alice's and Bob's encryption
certificates (issuerAndSerialNumber and subjectKeyIdentifier), checked by structure
only (their private keys are not available offline, see the data README); Ed25519
signatures with Carlos's key (RFC 8419) made and verified by us. OpenSSL 3.0.19 cannot
take part in that last one: it neither signs (``CMS_add1_signer: no default digest``)
nor verifies (``eddsa_digest_signverify_init: invalid digest``) Ed25519 in CMS, its own
messages included (measured).

What is refused, and why: the Ed25519 CA's certificates (Carlos, Dana, and the cross-
signed paths) do not validate: ``cryptography.x509.verification`` (our path builder)
only admits RSA and ECDSA keys and signatures in a path, the WebPKI algorithm set
(UNTRUSTED, "Forbidden public key algorithm"). X25519 encryption certificates (Carlos,
Dana) are refused for encryption: the engine encrypts to RSA (key transport) and EC
P-256/384/521 (ECDH, RFC 5753) only, not X25519 (RFC 8418) (validator: WRONG_USAGE
"only RSA and EC keys can be encrypted to"; encryptor: ``EncryptError``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from gateway.smime import mime
from gateway.smime.encrypt import Recipient, encrypt
from gateway.smime.sign import sign
from gateway.smime.types import CertStatus, EncryptError, Purpose
from gateway.smime.validate import CertificateValidator
from gateway.smime.verify import verify
from tests.peers.cms_tools import OpenSSLCms, run_tool
from tests.smime.cli.conftest import Cli, make_cli
from tests.smime.signverify.identities import AcceptAll

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc9216"
ALICE, BOB, CARLOS = "alice@smime.example", "bob@smime.example", "carlos@smime.example"
ENTITY = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nThis is a test message.\r\n"
ISSUERS = {
    "ca.rsa.crt": "ca.rsa.crt",
    "ca.25519.crt": "ca.25519.crt",
    "ca.rsa.cross.crt": "ca.25519.crt",
    "ca.25519.cross.crt": "ca.rsa.crt",
    **{f"{who}.{use}.crt": "ca.rsa.crt" for who in ("alice", "bob") for use in ("sign", "enc")},
    **{f"{who}.{use}.crt": "ca.25519.crt" for who in ("carlos", "dana") for use in ("sign", "enc")},
}


def cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((DATA / name).read_bytes())


def key(name: str) -> object:
    return serialization.load_pem_private_key((DATA / name).read_bytes(), password=None)


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return make_cli(capsysbinary, monkeypatch)


@pytest.fixture(scope="module")
def rsa_ca() -> CertificateValidator:
    """Trusts the RSA sample CA; RFC 9216 §2.3: no revocation information is published."""
    return CertificateValidator([cert("ca.rsa.crt")], revocation="off")


def test_material_is_intact() -> None:
    for name, issuer in ISSUERS.items():
        cert(name).verify_directly_issued_by(cert(issuer))
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    for key_file, cert_file in (
        ("alice.sign.key", "alice.sign.crt"),
        ("carlos.sign.key", "carlos.sign.crt"),
    ):
        private = key(key_file)
        assert private.public_key().public_bytes(*spki) == cert(
            cert_file
        ).public_key().public_bytes(*spki)  # type: ignore[attr-defined]
    assert isinstance(key("alice.sign.key"), rsa.RSAPrivateKey)
    assert isinstance(key("carlos.sign.key"), ed25519.Ed25519PrivateKey)
    assert isinstance(cert("dana.enc.crt").public_key(), x25519.X25519PublicKey)
    assert cert("bob.enc.crt").subject.rfc4514_string() == "CN=Bob Babbage,OU=LAMPS WG,O=IETF"


@pytest.mark.parametrize(
    ("name", "purpose", "status"),
    [
        ("alice.sign.crt", Purpose.SMIME_SIGN, CertStatus.VALID),
        ("alice.enc.crt", Purpose.SMIME_ENCRYPT, CertStatus.VALID),
        ("bob.sign.crt", Purpose.SMIME_SIGN, CertStatus.VALID),
        ("bob.enc.crt", Purpose.SMIME_ENCRYPT, CertStatus.VALID),
        ("alice.sign.crt", Purpose.SMIME_ENCRYPT, CertStatus.WRONG_USAGE),
        ("bob.enc.crt", Purpose.SMIME_SIGN, CertStatus.WRONG_USAGE),
        ("alice.sign.crt", Purpose.TLS_SERVER, CertStatus.WRONG_USAGE),
    ],
)
def test_rsa_paths(
    rsa_ca: CertificateValidator, name: str, purpose: Purpose, status: CertStatus
) -> None:
    assert rsa_ca.validate(cert(name), purpose=purpose).status is status


def test_ed25519_paths_and_x25519_recipients_are_refused(rsa_ca: CertificateValidator) -> None:
    ed_ca = CertificateValidator([cert("ca.25519.crt")], revocation="off")
    for name in ("carlos.sign.crt", "dana.sign.crt"):
        result = ed_ca.validate(cert(name), purpose=Purpose.SMIME_SIGN)
        assert result.status is CertStatus.UNTRUSTED and "Ed25519" in result.reason
    cross = rsa_ca.validate(cert("carlos.sign.crt"), [cert("ca.25519.cross.crt")])
    assert cross.status is CertStatus.UNTRUSTED
    for name in ("carlos.enc.crt", "dana.enc.crt"):
        refused = ed_ca.validate(cert(name), purpose=Purpose.SMIME_ENCRYPT)
        assert (refused.status, refused.reason) == (
            CertStatus.WRONG_USAGE,
            "only RSA and EC keys can be encrypted to",
        )
        with pytest.raises(EncryptError, match="unsupported recipient key type X25519"):
            encrypt(ENTITY, [Recipient(cert(name))])


@pytest.mark.parametrize("detached", [True, False], ids=["detached", "opaque"])
def test_alice_signs_we_verify(rsa_ca: CertificateValidator, detached: bool) -> None:
    signed = sign(
        ENTITY,
        cert("alice.sign.crt"),
        key("alice.sign.key"),
        detached=detached,
        encryption_cert=cert("alice.enc.crt"),
    )
    result = verify(signed, validator=rsa_ca, from_address=ALICE)
    assert result.valid, result.reason
    assert result.signers[0].email_addresses == (ALICE,)
    assert not verify(signed, validator=rsa_ca, from_address=BOB).valid


def test_carlos_ed25519_signature() -> None:
    """Ed25519 signatures are made and checked (RFC 8419); only the path is refused."""
    signed = sign(ENTITY, cert("carlos.sign.crt"), key("carlos.sign.key"))
    assert b'micalg="sha-512"' in signed
    result = verify(signed, validator=AcceptAll(), from_address=CARLOS)
    assert result.valid, result.reason
    assert result.signers[0].signature_algorithm == "ed25519"
    ed_ca = CertificateValidator([cert("ca.25519.crt")], revocation="off")
    refused = verify(signed, validator=ed_ca, from_address=CARLOS)
    assert not refused.valid and refused.signers[0].signature_valid
    assert refused.reason.startswith("signer certificate untrusted")


@pytest.mark.parametrize("id_type", ["issuer-serial", "ski"])
def test_encrypt_to_alice_and_bob(id_type: str) -> None:
    recipients = [Recipient(cert(f"{who}.enc.crt"), id_type=id_type) for who in ("alice", "bob")]
    message = encrypt(ENTITY, recipients, cipher="aes-256-cbc")
    infos = cms.ContentInfo.load(message)["content"]["recipient_infos"]
    named = set()
    for info in infos:
        rid = info.chosen["rid"].chosen
        if id_type == "ski":
            named.add(bytes(rid.native))
        else:
            named.add(rid["serial_number"].native)
    expected = {
        cert(f"{who}.enc.crt")
        .extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        .value.digest
        if id_type == "ski"
        else cert(f"{who}.enc.crt").serial_number
        for who in ("alice", "bob")
    }
    assert named == expected


@pytest.mark.peer
def test_openssl_verifies_our_signature(openssl_cms: OpenSSLCms) -> None:
    signed = sign(ENTITY, cert("alice.sign.crt"), key("alice.sign.key"))
    content = openssl_cms.verify(signed, DATA / "ca.rsa.crt", inform="SMIME", binary=False)
    assert mime.canonicalize_crlf(content) == ENTITY


@pytest.mark.peer
def test_openssl_signature_verified_by_us(
    openssl_cms: OpenSSLCms, rsa_ca: CertificateValidator, cli: Cli, tmp_path: Path
) -> None:
    source, out = tmp_path / "in.txt", tmp_path / "signed.eml"
    source.write_bytes(ENTITY.replace(b"\r\n", b"\n"))
    run_tool([
        openssl_cms.openssl, "cms", "-sign", "-in", source, "-signer", DATA / "alice.sign.crt",
        "-inkey", DATA / "alice.sign.key", "-md", "sha256", "-outform", "SMIME", "-out", out,
    ])  # fmt: skip
    result = verify(out.read_bytes(), validator=rsa_ca, from_address=ALICE)
    assert result.valid, result.reason
    run = cli("smime", "verify", out, "--from", ALICE, "--anchors", DATA / "ca.rsa.crt",
              "--revocation", "off")  # fmt: skip
    assert run.status == 0, run.out.decode()
    assert b"subject: CN=Alice Lovelace,OU=LAMPS WG,O=IETF" in run.out
