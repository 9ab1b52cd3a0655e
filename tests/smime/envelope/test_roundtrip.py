"""Encrypt then decrypt with our own code: every cipher x key transport x identifier type,
several recipients, renewed keys, the MIME wrappers."""

from __future__ import annotations

import os

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.smime import der, mime
from gateway.smime.decrypt import decrypt, decrypt_entity, decrypt_parsed
from gateway.smime.encrypt import Recipient, encrypt, encrypt_entity, plan_recipients
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.types import DecryptError, EncryptError, RecipientCapabilities
from tests.smime.envelope.identities import (
    ALICE,
    BOB,
    CLAIRE,
    ERIN,
    FRANK,
    EnvelopePki,
    self_signed,
)

MESSAGE = (
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Compte rendu de consultation =C3=A9crit.\r\n"
)

CIPHERS = ["aes-128-cbc", "aes-256-cbc", "aes-128-gcm", "aes-256-gcm"]
TRANSPORTS = [("rsa-pkcs1v15", ALICE), ("rsa-oaep", ALICE), ("ecdh", ERIN)]


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize(("key_transport", "who"), TRANSPORTS)
@pytest.mark.parametrize("id_type", ["issuer-serial", "ski"])
def test_round_trip(
    envelope_pki: EnvelopePki, cipher: str, key_transport: str, who: str, id_type: str
) -> None:
    recipient = Recipient(envelope_pki.cert(who), key_transport, id_type)
    message = encrypt(MESSAGE, [recipient], cipher=cipher)
    result = decrypt(message, [envelope_pki.key(who)])
    assert result.content == MESSAGE
    assert result.cipher == cipher
    assert result.key_transport == key_transport
    assert result.authenticated == cipher.endswith("gcm")
    assert not result.weak
    assert result.recipient_id.kind == id_type
    assert result.certificate == envelope_pki.cert(who)
    # the structure is what RFC 5652 / RFC 5083 say, as asn1crypto reads it
    parsed = cms.ContentInfo.load(message)
    expected = "authenticated_enveloped_data" if cipher.endswith("gcm") else "enveloped_data"
    assert parsed["content_type"].native == expected
    assert parsed.dump(force=True) == message  # we emitted DER


def test_versions_follow_rfc5652(envelope_pki: EnvelopePki) -> None:
    def version(recipients: list[Recipient]) -> int:
        content = cms.ContentInfo.load(encrypt(b"x", recipients, cipher="aes-256-cbc"))
        return int(content["content"]["version"].native[1:])

    assert version([Recipient(envelope_pki.cert(ALICE))]) == 0
    assert version([Recipient(envelope_pki.cert(ALICE), id_type="ski")]) == 2
    assert version([Recipient(envelope_pki.cert(ERIN), "ecdh")]) == 2


def test_several_recipients_rsa_and_ec(envelope_pki: EnvelopePki) -> None:
    recipients = [
        Recipient(envelope_pki.cert(ALICE), "rsa-oaep"),
        Recipient(envelope_pki.cert(BOB), "rsa-pkcs1v15", "ski"),
        Recipient(envelope_pki.cert(ERIN), "ecdh"),
        Recipient(envelope_pki.cert(FRANK), "ecdh", "ski"),
    ]
    message = encrypt(MESSAGE, recipients, cipher="aes-256-gcm")
    for who in (ALICE, BOB, ERIN, FRANK):
        assert decrypt(message, [envelope_pki.key(who)]).content == MESSAGE
    with pytest.raises(DecryptError):
        decrypt(message, [envelope_pki.key(CLAIRE)])


def test_renewed_key_is_picked_by_recipient_id(envelope_pki: EnvelopePki) -> None:
    old, new = envelope_pki.key(ALICE), envelope_pki.key("alice-renewed")
    assert old.certificate.serial_number != new.certificate.serial_number
    for_old = encrypt(MESSAGE, [Recipient(old.certificate)], cipher="aes-256-cbc")
    for_new = encrypt(MESSAGE, [Recipient(new.certificate, id_type="ski")], cipher="aes-256-gcm")
    for message, expected in ((for_old, old), (for_new, new)):
        for keys in ([old, new], [new, old]):
            result = decrypt(message, keys)
            assert result.content == MESSAGE
            assert result.certificate == expected.certificate


def test_no_matching_key(envelope_pki: EnvelopePki) -> None:
    message = encrypt(MESSAGE, [Recipient(envelope_pki.cert(ALICE))], cipher="aes-256-cbc")
    with pytest.raises(DecryptError) as caught:
        decrypt(message, [envelope_pki.key(BOB), envelope_pki.key(ERIN)])
    assert "no recipient info" in caught.value.detail


def test_empty_and_block_sized_contents(envelope_pki: EnvelopePki) -> None:
    for content in (b"", b"a" * 15, b"a" * 16, b"a" * 17, os.urandom(100_000)):
        for cipher in ("aes-256-cbc", "aes-128-gcm"):
            message = encrypt(content, [Recipient(envelope_pki.cert(BOB))], cipher=cipher)
            assert decrypt(message, [envelope_pki.key(BOB)]).content == content


def test_refused_algorithms(envelope_pki: EnvelopePki) -> None:
    recipient = Recipient(envelope_pki.cert(ALICE))
    for cipher in ("des-ede3-cbc", "aes-192-cbc", "rc2", "aes-256-ctr"):
        with pytest.raises(EncryptError):
            encrypt(MESSAGE, [recipient], cipher=cipher)
    with pytest.raises(EncryptError):
        Recipient(envelope_pki.cert(ALICE), "ecdh")
    with pytest.raises(EncryptError):
        Recipient(envelope_pki.cert(ERIN), "rsa-oaep")
    with pytest.raises(EncryptError):
        Recipient(envelope_pki.cert(ALICE), id_type="email")
    with pytest.raises(EncryptError):
        encrypt(MESSAGE, [], cipher="aes-256-cbc")


def test_plan_recipients_applies_the_auto_rule(envelope_pki: EnvelopePki) -> None:
    modern = RecipientCapabilities(aes_gcm=True, rsa_oaep=True)
    cipher, recipients = plan_recipients(
        [(envelope_pki.cert(ALICE), modern), (envelope_pki.cert(ERIN), modern)]
    )
    assert cipher == "aes-256-gcm"
    assert [r.key_transport for r in recipients] == ["rsa-oaep", "ecdh"]
    cipher, recipients = plan_recipients(
        [(envelope_pki.cert(ALICE), modern), (envelope_pki.cert(BOB), None)], id_type="ski"
    )
    assert cipher == "aes-256-cbc"
    assert [r.key_transport for r in recipients] == ["rsa-oaep", "rsa-pkcs1v15"]
    assert {r.id_type for r in recipients} == {"ski"}
    message = encrypt(MESSAGE, recipients, cipher=cipher)
    assert decrypt(message, [envelope_pki.key(BOB)]).content == MESSAGE


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "aes-128-gcm"])
def test_entity_round_trip(envelope_pki: EnvelopePki, cipher: str) -> None:
    entity = encrypt_entity(MESSAGE, [Recipient(envelope_pki.cert(ALICE))], cipher=cipher)
    header, _, body = entity.partition(b"\r\n\r\n")
    smime_type = b"authEnveloped-data" if cipher.endswith("gcm") else b"enveloped-data"
    assert b"application/pkcs7-mime; smime-type=" + smime_type in header
    assert b"Content-Transfer-Encoding: base64" in header
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))
    result = decrypt_entity(entity, [envelope_pki.key(ALICE)])
    assert result.content == MESSAGE
    # a relay that turned CRLF into LF, and the legacy x- type, are still read
    legacy = entity.replace(b"application/pkcs7-mime", b"application/x-pkcs7-mime")
    assert decrypt_entity(legacy.replace(b"\r\n", b"\n"), [envelope_pki.key(ALICE)]).content == (
        MESSAGE
    )


def test_entity_of_another_type_is_refused(envelope_pki: EnvelopePki) -> None:
    keys = [envelope_pki.key(ALICE)]
    for entity in (
        MESSAGE,
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\nMIIB\r\n",
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIIB=====\r\n",
    ):
        with pytest.raises(DecryptError) as caught:
            decrypt_entity(entity, keys)
        assert str(caught.value) == "the message could not be decrypted"


def test_ber_indefinite_and_constructed_content(envelope_pki: EnvelopePki) -> None:
    """The same envelope re-encoded the way NSS writes it: indefinite lengths and the
    encrypted content split in a constructed OCTET STRING (with a nested piece)."""
    message = encrypt(MESSAGE, [Recipient(envelope_pki.cert(BOB))], cipher="aes-256-cbc")
    envelope = cms.ContentInfo.load(message)["content"]
    eci = envelope["encrypted_content_info"]
    ciphertext = eci["encrypted_content"].native
    pieces = (
        der.octet_string(ciphertext[:16])
        + b"\x24\x80"
        + der.octet_string(ciphertext[16:20])
        + der.octet_string(b"")
        + b"\x00\x00"
        + der.octet_string(ciphertext[20:])
    )

    def indefinite(tag: int, body: bytes) -> bytes:
        return bytes((tag,)) + b"\x80" + body + b"\x00\x00"

    ber_eci = indefinite(
        0x30,
        eci["content_type"].dump()
        + eci["content_encryption_algorithm"].dump()
        + indefinite(0xA0, pieces),
    )
    ber_envelope = indefinite(
        0x30, envelope["version"].dump() + envelope["recipient_infos"].dump() + ber_eci
    )
    ber = indefinite(0x30, der.oid("1.2.840.113549.1.7.3") + indefinite(0xA0, ber_envelope))
    assert decrypt(ber, [envelope_pki.key(BOB)]).content == MESSAGE


def test_p384_recipient_and_missing_ski() -> None:
    """ECDH on P-384 (sha384kdf), and a certificate without SubjectKeyIdentifier: usable
    by issuer-serial, refused (typed error) by ski."""
    ec_key = ec.generate_private_key(ec.SECP384R1())
    ec_cert = self_signed(ec_key)
    for cipher in ("aes-256-gcm", "aes-128-cbc"):
        message = encrypt(MESSAGE, [Recipient(ec_cert, "ecdh", "ski")], cipher=cipher)
        assert decrypt(message, [DecryptionKey(ec_cert, ec_key)]).content == MESSAGE
    assert der.oid("1.3.132.1.11.2") in message  # dhSinglePass-stdDH-sha384kdf-scheme
    no_ski_key = ec.generate_private_key(ec.SECP256R1())
    no_ski = self_signed(no_ski_key, with_ski=False)
    message = encrypt(MESSAGE, [Recipient(no_ski, "ecdh")], cipher="aes-256-cbc")
    assert decrypt(message, [DecryptionKey(no_ski, no_ski_key)]).content == MESSAGE
    with pytest.raises(EncryptError, match="subjectKeyIdentifier"):
        encrypt(MESSAGE, [Recipient(no_ski, "ecdh", "ski")], cipher="aes-256-cbc")


def test_decrypt_parsed_gives_what_decrypt_entity_gives(envelope_pki: EnvelopePki) -> None:
    """The inbound agent hands over the entity it already parsed: same result, same
    refusals."""
    keys = [envelope_pki.key(ALICE)]
    entity = encrypt_entity(MESSAGE, [Recipient(envelope_pki.cert(ALICE))], cipher="aes-256-gcm")
    opened = decrypt_parsed(mime.parse_entity(entity), keys)
    assert opened == decrypt_entity(entity, keys)
    assert opened.content == MESSAGE
    signed_type = b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\nMIIB\r\n"
    bad_base64 = (
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMIIB=====\r\n"
    )
    for refused in (MESSAGE, signed_type, bad_base64):
        with pytest.raises(DecryptError) as caught:
            decrypt_parsed(mime.parse_entity(refused), keys)
        assert str(caught.value) == "the message could not be decrypted"
