"""The inbound agent's sans-IO core with real crypto: messages made by
``gateway.smime`` (as the outbound agent makes them, header protection included) and by
``openssl cms``, opened with the session-wide development PKI's keys.

Cast: claire.durand@clinique-b.test writes to alice.martin@chu-a.test (local); the
gateway holds alice's encryption key, never bruno's (bruno plays "a key on a smart
card")."""

from __future__ import annotations

import email
import email.header
import email.policy
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.inbound.headers import NOT_VERIFIED_TAG, Signature
from gateway.inbound.process import (
    KEY_NOT_HELD,
    UNSIGNED_CBC,
    Decision,
    InboundPolicy,
    InboundResult,
    process_inbound,
)
from gateway.pki.dev import DevPki
from gateway.pki.store import load_first_certificate, load_private_key
from gateway.relay import protect
from gateway.smime import mime, smime_parts
from gateway.smime.encrypt import Recipient, encrypt_entity
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.sign import sign
from gateway.smime.types import PUBLIC_DECRYPT_ERROR
from gateway.smime.validate import CertificateValidator
from tests.peers.cms_tools import OpenSSLCms

ALICE = "alice.martin@chu-a.test"
BRUNO = "bruno.petit@chu-a.test"
CLAIRE = "claire.durand@clinique-b.test"
HOST = "mx.chu-a.test"
SECRET = b"Le patient Dupont va mieux."

LETTER = (
    b"Received: from mx.clinique-b.test by mx.chu-a.test\r\n"
    b"From: Claire <claire.durand@clinique-b.test>\r\n"
    b"To: Alice <alice.martin@chu-a.test>\r\n"
    b"Subject: Compte rendu Dupont\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0100\r\n"
    b"Message-ID: <m1@clinique-b.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n" + SECRET + b"\r\n"
)
TEXT_ENTITY = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + SECRET + b"\r\n"


@dataclass(frozen=True)
class Cast:
    pki: DevPki
    validator: CertificateValidator
    alice_keys: tuple[DecryptionKey, ...]

    def cert(self, address: str, purpose: str = "enc") -> x509.Certificate:
        return load_first_certificate(self.pki.user_cert(address, purpose))

    def signed(self, entity: bytes, *, detached: bool = True) -> bytes:
        key = load_private_key(self.pki.user_key(CLAIRE, "sign"))
        chain = x509.load_pem_x509_certificates(self.pki.intermediates.read_bytes())
        return sign(entity, self.cert(CLAIRE, "sign"), key, chain, detached=detached)

    def process(
        self, message: bytes, policy: InboundPolicy | None = None, **kwargs: object
    ) -> InboundResult:
        return process_inbound(
            message,
            ALICE,
            keys=kwargs.get("keys", self.alice_keys),  # type: ignore[arg-type]
            validator=self.validator,
            policy=policy or InboundPolicy(),
            hostname=HOST,
        )


def build_cast(dev_pki: DevPki) -> Cast:
    """Alice's decryption key and the dev PKI's validator (shared with other test files)."""
    validator = CertificateValidator.from_files(
        [dev_pki.root_cert],
        [dev_pki.intermediates],
        [dev_pki.crl("personnes"), dev_pki.crl("serveurs")],
    )
    key = load_private_key(dev_pki.user_key(ALICE, "enc"))
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    cert = load_first_certificate(dev_pki.user_cert(ALICE, "enc"))
    return Cast(dev_pki, validator, (DecryptionKey(cert, key),))


@pytest.fixture(scope="module")
def cast(dev_pki: DevPki) -> Cast:
    return build_cast(dev_pki)


def outbound(
    cast: Cast,
    letter: bytes = LETTER,
    *,
    to: str = ALICE,
    cipher: str = "aes-256-gcm",
    protect_headers: bool = True,
    wrap: bool = False,
    signed: bool = True,
) -> bytes:
    """The message the outbound agent would send (``gateway.relay.agent`` composition)."""
    split = protect.SplitMessage.of(letter)
    payload = protect.cryptographic_payload(split, protect=protect_headers, wrap=wrap)
    outer = protect.outer_header(split, protect=protect_headers)
    inner = cast.signed(payload) if signed else payload
    entity = encrypt_entity(inner, [Recipient(cast.cert(to))], cipher=cipher)
    return outer + b"MIME-Version: 1.0\r\n" + entity


def outer_fields(letter: bytes = LETTER) -> bytes:
    return protect.SplitMessage.of(letter).block() + b"MIME-Version: 1.0\r\n"


def with_openssl_envelope(der: bytes, letter: bytes = LETTER) -> bytes:
    return outer_fields(letter) + smime_parts.pkcs7_mime_entity(der, "enveloped-data")


def parsed(result: InboundResult) -> email.message.Message:
    return email.message_from_bytes(result.message, policy=email.policy.compat32)


def body(result: InboundResult) -> bytes:
    payload = parsed(result).get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.strip()


def subject(result: InboundResult) -> str:
    raw = parsed(result)["Subject"]
    return str(email.header.make_header(email.header.decode_header(raw)))


def security(result: InboundResult) -> str:
    return " ".join(str(parsed(result)["Missive-Security"]).split())


def auth_results(result: InboundResult) -> list[str]:
    return [" ".join(str(v).split()) for v in parsed(result).get_all("Authentication-Results", [])]


def assert_marked(result: InboundResult) -> None:
    assert subject(result).startswith(NOT_VERIFIED_TAG)


# --------------------------------------------------------------------------- valid mail


def test_signed_and_encrypted_by_the_gateway_is_delivered_as_valid(cast: Cast) -> None:
    result = cast.process(outbound(cast))
    assert result.decision is Decision.DELIVER
    facts = result.facts
    assert facts.signature is Signature.VALID and facts.signer == CLAIRE
    assert facts.cipher == "aes-256-gcm" and facts.decrypted and not facts.weak
    assert facts.key_serial == f"{cast.alice_keys[0].certificate.serial_number:x}"
    assert facts.signer_serial == f"{cast.cert(CLAIRE, 'sign').serial_number:x}"
    assert SECRET in result.message
    assert subject(result) == "Compte rendu Dupont"  # the protected Subject, untagged
    assert security(result) == (
        f'encrypted=aes-256-gcm; signature=valid; signer="{CLAIRE}"; weak=no'
    )
    assert auth_results(result) == [
        f"{HOST}; smime=pass body.smime-identifier={CLAIRE} body.smime-serial={facts.signer_serial}"
    ]


def test_header_protection_round_trip_shows_the_real_headers(cast: Cast) -> None:
    message = outbound(cast)
    assert b"Dupont" not in message and b"Subject: [...]" in message
    result = cast.process(b"Received: from relay.test by mx.chu-a.test\r\n" + message)
    shown = parsed(result)
    assert result.facts.header_source == "hp-cipher"
    assert shown.get_all("Subject") == ["Compte rendu Dupont"]
    assert shown["Message-ID"] == "<m1@clinique-b.test>"
    assert shown.get_all("Received") == [  # the outer trace, every hop
        "from relay.test by mx.chu-a.test",
        "from mx.clinique-b.test by mx.chu-a.test",
    ]
    assert shown["HP-Outer"] is None and "hp=" not in shown["Content-Type"]
    assert shown.get_content_type() == "text/plain"
    assert body(result) == SECRET


def test_wrapped_message_shows_the_inner_headers(cast: Cast) -> None:
    result = cast.process(outbound(cast, protect_headers=True, wrap=True))
    shown = parsed(result)
    assert result.decision is Decision.DELIVER and result.facts.signature is Signature.VALID
    assert result.facts.header_source == "wrapped"
    assert shown.get_all("Subject") == ["Compte rendu Dupont"]
    assert shown.get_content_type() == "text/plain"
    assert body(result) == SECRET


def test_openssl_signed_then_cbc_encrypted_is_valid(cast: Cast, openssl_cms: OpenSSLCms) -> None:
    signed = openssl_cms.sign(
        TEXT_ENTITY,
        cast.pki.user_cert(CLAIRE, "sign"),
        cast.pki.user_key(CLAIRE, "sign"),
        chain=cast.pki.intermediates,
        outform="SMIME",
        detached=True,
    )
    der = openssl_cms.encrypt(mime.canonicalize_crlf(signed), [cast.pki.user_cert(ALICE, "enc")])
    result = cast.process(with_openssl_envelope(der), InboundPolicy(unsigned_cbc="hold"))
    assert result.decision is Decision.DELIVER  # CBC, but validly signed
    assert result.facts.signature is Signature.VALID and result.facts.cipher == "aes-256-cbc"
    assert subject(result) == "Compte rendu Dupont"
    assert SECRET in result.message


# --------------------------------------------------------------------------- failures


def test_tampered_ciphertext_is_held_with_the_public_text(cast: Cast) -> None:
    message = outbound(cast)
    head, _, body = message.partition(b"\r\n\r\n")
    lines = body.split(b"\r\n")
    middle = len(lines) // 2
    lines[middle] = (
        lines[middle][:10] + (b"A" if lines[middle][10:11] != b"A" else b"B") + lines[middle][11:]
    )
    tampered = head + b"\r\n\r\n" + b"\r\n".join(lines)
    result = cast.process(tampered)
    assert result.decision is Decision.HOLD
    assert result.reason == PUBLIC_DECRYPT_ERROR
    assert result.message == tampered and SECRET not in result.message
    assert result.facts.failure_detail  # the cause, for the local log


def test_tampered_signature_is_marked_invalid(cast: Cast) -> None:
    signed = cast.signed(TEXT_ENTITY)
    forged = signed.replace(b"va mieux", b"va mal!!")
    assert forged != signed
    der = encrypt_payload(cast, forged, "aes-256-gcm")
    result = cast.process(der)
    assert result.decision is Decision.DELIVER  # GCM: not under the CBC rule
    assert result.facts.signature is Signature.INVALID
    assert_marked(result)
    assert "signature=invalid" in security(result)
    assert auth_results(result)[0].startswith(f"{HOST}; smime=fail")


def encrypt_payload(cast: Cast, entity: bytes, cipher: str, to: str = ALICE) -> bytes:
    return outer_fields() + encrypt_entity(entity, [Recipient(cast.cert(to))], cipher=cipher)


def test_signer_not_bound_to_from_is_invalid(cast: Cast) -> None:
    letter = LETTER.replace(b"From: Claire <claire.durand@", b"From: Bruno <bruno.petit@chu-a.")
    letter = letter.replace(b"chu-a.clinique-b.test", b"chu-a.test")
    result = cast.process(outbound(cast, letter, protect_headers=False))
    assert result.facts.signature is Signature.INVALID
    assert "bound" in result.facts.signature_reason
    assert_marked(result)


@pytest.mark.parametrize("unknown_key", ["pass-marked", "hold"])
def test_key_not_held(cast: Cast, unknown_key: str) -> None:
    message = outbound(cast, to=BRUNO)
    result = cast.process(message, InboundPolicy(unknown_key=unknown_key))
    assert result.facts.encrypted and not result.facts.decrypted
    if unknown_key == "hold":
        assert result.decision is Decision.HOLD and result.reason == KEY_NOT_HELD
        assert result.message == message
        return
    assert result.decision is Decision.PASS_MARKED
    shown = parsed(result)
    assert shown.get_content_type() == "application/pkcs7-mime"  # still encrypted
    assert message.split(b"\r\n\r\n", 1)[1] in result.message
    assert security(result) == 'encrypted=aes-256-gcm; signature=none; signer=""; weak=no'
    assert auth_results(result) == [f"{HOST}; smime=none"]
    assert_marked(result)


def impostor_of(certificate: x509.Certificate) -> x509.Certificate:
    """A certificate with the same issuer and serial as ``certificate`` but another key:
    a RecipientInfo made for it names ours (issuerAndSerialNumber) with the wrong key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        x509.CertificateBuilder()
        .subject_name(certificate.subject)
        .issuer_name(certificate.issuer)
        .public_key(key.public_key())
        .serial_number(certificate.serial_number)
        .not_valid_before(certificate.not_valid_before_utc)
        .not_valid_after(certificate.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )


def test_recipient_info_naming_our_key_with_a_wrong_key_is_held(cast: Cast) -> None:
    impostor = impostor_of(cast.alice_keys[0].certificate)
    entity = encrypt_entity(cast.signed(TEXT_ENTITY), [Recipient(impostor)], cipher="aes-256-gcm")
    message = outer_fields() + entity
    for unknown_key in ("pass-marked", "hold"):
        result = cast.process(message, InboundPolicy(unknown_key=unknown_key))
        assert result.decision is Decision.HOLD and result.reason == PUBLIC_DECRYPT_ERROR
        assert result.message == message


@pytest.mark.parametrize("unsigned_cbc", ["mark", "hold"])
def test_unsigned_cbc(cast: Cast, openssl_cms: OpenSSLCms, unsigned_cbc: str) -> None:
    der = openssl_cms.encrypt(TEXT_ENTITY, [cast.pki.user_cert(ALICE, "enc")])
    message = with_openssl_envelope(der)
    result = cast.process(message, InboundPolicy(unsigned_cbc=unsigned_cbc))
    assert result.facts.cipher == "aes-256-cbc" and result.facts.signature is Signature.NONE
    if unsigned_cbc == "hold":
        assert result.decision is Decision.HOLD and result.reason == UNSIGNED_CBC
        assert result.message == message and SECRET not in result.message
        return
    assert result.decision is Decision.DELIVER and SECRET in result.message
    assert_marked(result)
    assert security(result) == 'encrypted=aes-256-cbc; signature=none; signer=""; weak=no'


def test_unsigned_gcm_is_delivered_marked_even_when_cbc_is_held(
    cast: Cast, openssl_cms: OpenSSLCms
) -> None:
    der = openssl_cms.encrypt(TEXT_ENTITY, [cast.pki.user_cert(ALICE, "enc")], cipher="aes-128-gcm")
    message = outer_fields() + smime_parts.pkcs7_mime_entity(der, "authEnveloped-data")
    result = cast.process(message, InboundPolicy(unsigned_cbc="hold"))
    assert result.decision is Decision.DELIVER and SECRET in result.message
    assert result.facts.cipher == "aes-128-gcm"
    assert_marked(result)


@pytest.mark.parametrize("accept_3des", [True, False])
def test_3des(cast: Cast, openssl_cms: OpenSSLCms, accept_3des: bool) -> None:
    signed = cast.signed(TEXT_ENTITY)
    der = openssl_cms.encrypt(signed, [cast.pki.user_cert(ALICE, "enc")], cipher="des3")
    message = with_openssl_envelope(der)
    result = cast.process(message, InboundPolicy(accept_3des=accept_3des, unsigned_cbc="hold"))
    if not accept_3des:
        assert result.decision is Decision.HOLD and result.reason == PUBLIC_DECRYPT_ERROR
        assert result.message == message
        return
    assert result.decision is Decision.DELIVER and SECRET in result.message
    assert result.facts.weak and result.facts.cipher == "des-ede3-cbc"
    assert security(result).endswith("weak=yes")
    assert result.facts.signature is Signature.VALID


# --------------------------------------------------------------------------- headers, EFAIL


FORGED = (
    b"Authentication-Results: mx.chu-a.test; smime=pass body.smime-identifier=x@y.test\r\n"
    b"Authentication-Results: (comment) MX.CHU-A.TEST. 1; smime=pass\r\n"
    b"Authentication-Results: mx.other.test; spf=pass smtp.mailfrom=other.test\r\n"
    b"Missive-Security: encrypted=aes-256-gcm; signature=valid;\r\n"
    b'  signer="chef@chu-a.test"; weak=no\r\n'
    b"missive-decision: deliver\r\n"
)


def test_forged_headers_are_removed_from_a_clear_message(cast: Cast) -> None:
    result = cast.process(FORGED + LETTER)
    assert result.decision is Decision.DELIVER
    assert b"chef@" not in result.message and b"missive-decision" not in result.message
    assert auth_results(result) == [
        f"{HOST}; smime=none",
        "mx.other.test; spf=pass smtp.mailfrom=other.test",
    ]
    assert security(result) == 'encrypted=no; signature=none; signer=""; weak=no'
    assert_marked(result)
    assert body(result) == SECRET


def test_forged_headers_inside_the_protected_payload_are_removed(cast: Cast) -> None:
    result = cast.process(outbound(cast, FORGED + LETTER))
    assert result.facts.signature is Signature.VALID
    assert (
        b"chef@" not in result.message
        and b"smime=pass body.smime-identifier=x@" not in result.message
    )
    assert len(auth_results(result)) == 2


def test_encrypted_part_beside_a_clear_sibling_is_not_decrypted(cast: Cast) -> None:
    encrypted = encrypt_entity(TEXT_ENTITY, [Recipient(cast.cert(ALICE))], cipher="aes-256-cbc")
    message = (
        protect.SplitMessage.of(LETTER).block()
        + b"MIME-Version: 1.0\r\n"
        + b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        + b'--b1\r\nContent-Type: text/html\r\n\r\n<img src="http://evil.test/\r\n'
        + b"--b1\r\n"
        + encrypted
        + b"\r\n"
        + b'--b1\r\nContent-Type: text/html\r\n\r\n">\r\n--b1--\r\n'
    )
    result = cast.process(message)
    assert result.decision is Decision.DELIVER
    assert not result.facts.encrypted and not result.facts.decrypted
    assert SECRET not in result.message and encrypted in result.message
    assert security(result).startswith("encrypted=no; signature=none")
    assert_marked(result)


def test_clear_rfc822_body_is_not_unwrapped(cast: Cast) -> None:
    inner = LETTER.replace(b"Subject: Compte rendu Dupont", b"Subject: Inner")
    message = outer_fields().replace(b"MIME-Version: 1.0\r\n", b"") + protect.wrap_rfc822(inner)
    result = cast.process(message)
    assert result.facts.header_source == "outer"
    assert subject(result) == f"{NOT_VERIFIED_TAG} Compte rendu Dupont"


def test_subject_tag_is_rfc2047_and_keeps_an_encoded_subject(cast: Cast) -> None:
    letter = LETTER.replace(b"Subject: Compte rendu Dupont", b"Subject: =?utf-8?q?R=C3=A9sultat?=")
    result = cast.process(letter)
    assert b"[NON V" not in result.message  # only as an encoded-word, 7-bit
    assert subject(result) == f"{NOT_VERIFIED_TAG} Résultat"


def test_message_without_subject_gets_the_tag(cast: Cast) -> None:
    result = cast.process(LETTER.replace(b"Subject: Compte rendu Dupont\r\n", b""))
    assert subject(result) == NOT_VERIFIED_TAG


# --------------------------------------------------------------------------- garbage


def garbage_inputs(valid: bytes) -> Sequence[bytes]:
    head, _, body = valid.partition(b"\r\n\r\n")
    return [
        b"",
        b"\r\n",
        b"\x00\xff" * 300,
        b"no header at all",
        b"Subject: x\r\n\r\n",
        head + b"\r\n\r\n" + body[: len(body) // 2],
        head + b"\r\n\r\n" + b"!!!not base64!!!",
        head.replace(b"enveloped-data", b"signed-data") + b"\r\n\r\n" + body,
        b"Content-Type: multipart/signed; protocol=x\r\n\r\n--\r\n",
        b'Content-Type: multipart/signed; boundary="z"\r\n\r\n--z\r\n\r\nx\r\n--z--\r\n',
        b"Content-Type: application/pkcs7-mime\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMAA=\r\n",
        b"Content-Type: message/rfc822\r\n\r\n\xff\xfe",
        b'Subject: =?utf-8?b?\xff?=\r\nContent-Type: text/plain; hp="cipher\r\n\r\nx',
        valid.replace(b"\r\n", b"\n"),
        valid.replace(b"\r\n", b"\r"),
    ]


def test_garbage_never_raises(cast: Cast) -> None:
    valid = outbound(cast, cipher="aes-128-cbc")
    for message in garbage_inputs(valid):
        for policy in (InboundPolicy(), InboundPolicy(unknown_key="hold", unsigned_cbc="hold")):
            result = cast.process(message, policy)
            assert isinstance(result.decision, Decision)
            if result.decision is Decision.HOLD:
                assert result.message == message
            else:
                assert b"Missive-Security: " in result.message
