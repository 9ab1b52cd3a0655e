"""Every way decryption can fail gives one DecryptError with one public text (RFC 3218)."""

from __future__ import annotations

import os

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.smime import der
from gateway.smime.decrypt import decrypt
from gateway.smime.encrypt import Recipient, encrypt
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.types import PUBLIC_DECRYPT_ERROR, DecryptError
from tests.smime.envelope import crafting
from tests.smime.envelope.identities import ALICE, BOB, ERIN, FRANK, EnvelopePki, load_key

MESSAGE = b"Content-Type: text/plain\r\n\r\nResultats d'analyse.\r\n"


def _fails(message: bytes, keys: list[DecryptionKey], *, accept_3des: bool = False) -> str:
    """Assert one DecryptError with the public text; return the detail for checks."""
    with pytest.raises(DecryptError) as caught:
        decrypt(message, keys, accept_3des=accept_3des)
    assert str(caught.value) == PUBLIC_DECRYPT_ERROR
    assert type(caught.value) is DecryptError
    return caught.value.detail


def _swap_key(envelope_pki: EnvelopePki, who: str, other: str) -> DecryptionKey:
    """``who``'s certificate with the private key of ``other`` (same key type): the
    recipient id matches but the key is wrong. Built without the consistency check."""
    key = object.__new__(DecryptionKey)
    object.__setattr__(key, "certificate", envelope_pki.cert(who))
    object.__setattr__(key, "private_key", load_key(envelope_pki.key_path(other)))
    return key


def test_key_must_match_certificate(envelope_pki: EnvelopePki) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        DecryptionKey(envelope_pki.cert(ALICE), load_key(envelope_pki.key_path(BOB)))


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "aes-128-gcm"])
@pytest.mark.parametrize("key_transport", ["rsa-pkcs1v15", "rsa-oaep"])
def test_wrong_rsa_key(envelope_pki: EnvelopePki, cipher: str, key_transport: str) -> None:
    message = encrypt(MESSAGE, [Recipient(envelope_pki.cert(ALICE), key_transport)], cipher=cipher)
    detail = _fails(message, [_swap_key(envelope_pki, ALICE, BOB)])
    assert detail == "key or content decryption failed"


@pytest.mark.parametrize("cipher", ["aes-256-cbc", "aes-256-gcm"])
def test_wrong_ec_key(envelope_pki: EnvelopePki, cipher: str) -> None:
    message = encrypt(MESSAGE, [Recipient(envelope_pki.cert(ERIN), "ecdh")], cipher=cipher)
    assert _fails(message, [_swap_key(envelope_pki, ERIN, FRANK)]) == (
        "key or content decryption failed"
    )


def test_tampered_gcm_tag_and_ciphertext(envelope_pki: EnvelopePki) -> None:
    message = encrypt(MESSAGE, [Recipient(envelope_pki.cert(ALICE))], cipher="aes-256-gcm")
    keys = [envelope_pki.key(ALICE)]
    last = bytearray(message)
    last[-1] ^= 1  # the last octet is in the mac
    _fails(bytes(last), keys)
    ciphertext_at = len(message) - 18 - len(MESSAGE)  # content, then the 16-octet mac TLV
    flipped = bytearray(message)
    flipped[ciphertext_at] ^= 0x80
    _fails(bytes(flipped), keys)


def test_bad_gcm_tag_length(envelope_pki: EnvelopePki) -> None:
    infos = crafting._recipient_infos([Recipient(envelope_pki.cert(ALICE))], os.urandom(32))[0]
    keys = [envelope_pki.key(ALICE)]
    # ICVlen 12 announced, 16-octet mac given; then an ICVlen outside 12..16
    detail = _fails(crafting.auth_enveloped(infos, os.urandom(12), 12, b"x" * 10, b"t" * 16), keys)
    assert "tag length" in detail
    _fails(crafting.auth_enveloped(infos, os.urandom(12), 4, b"x" * 10, b"t" * 4), keys)


def test_auth_attrs_are_authenticated(envelope_pki: EnvelopePki) -> None:
    """RFC 5083 §2.2: authAttrs, DER-encoded as a SET OF, are the GCM AAD; changing one
    octet of them makes the tag fail."""
    cek, nonce = os.urandom(32), os.urandom(12)
    infos = crafting._recipient_infos([Recipient(envelope_pki.cert(ALICE))], cek)[0]
    attrs = der.set_of(
        der.sequence(der.oid("1.2.840.113549.1.9.3"), der.set_of(der.oid("1.2.840.113549.1.7.1")))
    )
    sealed = AESGCM(cek).encrypt(nonce, MESSAGE, attrs)
    ciphertext, tag = sealed[:-16], sealed[-16:]
    keys = [envelope_pki.key(ALICE)]
    good = crafting.auth_enveloped(infos, nonce, 16, ciphertext, tag, attrs)
    result = decrypt(good, keys)
    assert result.content == MESSAGE and result.authenticated
    other = attrs.replace(der.oid("1.2.840.113549.1.7.1"), der.oid("1.2.840.113549.1.7.2"))
    _fails(crafting.auth_enveloped(infos, nonce, 16, ciphertext, tag, other), keys)
    _fails(crafting.auth_enveloped(infos, nonce, 16, ciphertext, tag), keys)  # attrs removed


@pytest.mark.parametrize(
    "padding",
    [b"\x00", b"\x11", b"\x02\x03", b"\x05" * 4 + b"\x04", b"\x10" * 15 + b"\x0f"],
)
def test_bad_cbc_padding(envelope_pki: EnvelopePki, padding: bytes) -> None:
    body = b"A" * (32 - len(padding)) + padding
    message = crafting.cbc_with_padding(envelope_pki.cert(ALICE), body)
    assert _fails(message, [envelope_pki.key(ALICE)]) == "key or content decryption failed"


def test_good_crafted_padding_is_accepted(envelope_pki: EnvelopePki) -> None:
    """The control for the test above: the same construction with valid padding."""
    for data in (b"", b"x" * 15, b"y" * 16):
        message = crafting.cbc_with_padding(envelope_pki.cert(ALICE), crafting.pkcs7_pad(data, 16))
        assert decrypt(message, [envelope_pki.key(ALICE)]).content == data


def test_3des_only_when_accepted(envelope_pki: EnvelopePki) -> None:
    message = crafting.cbc_with_padding(
        envelope_pki.cert(ALICE), crafting.pkcs7_pad(MESSAGE, 8), triple_des=True
    )
    keys = [envelope_pki.key(ALICE)]
    assert "3" in _fails(message, keys, accept_3des=False)
    result = decrypt(message, keys, accept_3des=True)
    assert result.content == MESSAGE
    assert result.weak
    assert result.cipher == "des-ede3-cbc"
    assert not result.authenticated


def test_kekri_and_pwri_are_refused(envelope_pki: EnvelopePki) -> None:
    keys = [envelope_pki.key(ALICE)]
    assert "kekri" in _fails(crafting.kekri_only(), keys)
    assert "pwri" in _fails(crafting.pwri_only(), keys)


def test_oaep_mgf_mismatch(envelope_pki: EnvelopePki) -> None:
    """The message claims MGF1-SHA-1 while the key was wrapped with MGF1-SHA-256."""
    recipient = Recipient(envelope_pki.cert(ALICE), "rsa-oaep")
    message = encrypt(MESSAGE, [recipient], cipher="aes-256-gcm")
    parsed = cms.ContentInfo.load(message)
    ri = parsed["content"]["recipient_infos"][0].chosen
    params = ri["key_encryption_algorithm"]["parameters"]
    params["mask_gen_algorithm"] = {"algorithm": "mgf1", "parameters": {"algorithm": "sha1"}}
    tampered = parsed.dump(force=True)
    assert tampered != message
    assert _fails(tampered, [envelope_pki.key(ALICE)]) == "key or content decryption failed"
    # an unknown mask generation function is refused as unsupported
    params["mask_gen_algorithm"] = {"algorithm": "1.2.3.4", "parameters": None}
    assert "mask generation" in _fails(parsed.dump(force=True), [envelope_pki.key(ALICE)])


def test_truncated_input(envelope_pki: EnvelopePki) -> None:
    message = encrypt(MESSAGE, [Recipient(envelope_pki.cert(ALICE))], cipher="aes-256-cbc")
    keys = [envelope_pki.key(ALICE)]
    for cut in (0, 1, 2, 10, 100, len(message) // 2, len(message) - 17, len(message) - 1):
        _fails(message[:cut], keys)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"\x30\x80",
        b"\x30\x84\xff\xff\xff\xff",
        b"\x30\x89" + b"\xff" * 9,
        b"\x1f\xff\xff\xff\xff\xff\xff",
        b"-----BEGIN PKCS7-----\n",
        os.urandom(64),
        der.sequence(der.oid("1.2.840.113549.1.7.1"), der.explicit(0, der.octet_string(b"x"))),
        der.sequence(der.oid("1.2.840.113549.1.7.3"), der.explicit(0, der.null())),
        b"\x30\x80" * 10_000,  # deep nesting must not exhaust the stack
    ],
)
def test_garbage(envelope_pki: EnvelopePki, garbage: bytes) -> None:
    _fails(garbage, [envelope_pki.key(ALICE)])


def test_gcm_in_enveloped_data_and_cbc_in_auth_enveloped_data(envelope_pki: EnvelopePki) -> None:
    infos = crafting._recipient_infos([Recipient(envelope_pki.cert(ALICE))], os.urandom(32))[0]
    gcm_algorithm = der.sequence(
        der.oid(crafting.OID_AES256_GCM), der.sequence(der.octet_string(os.urandom(12)))
    )
    keys = [envelope_pki.key(ALICE)]
    assert "does not fit" in _fails(crafting.enveloped(infos, gcm_algorithm, b"x" * 32), keys)


def test_no_partial_plaintext_on_failure(envelope_pki: EnvelopePki) -> None:
    """A failure raises; nothing of the content is in the error or its detail."""
    secret = b"Content-Type: text/plain\r\n\r\nPatient: Jeanne Dupont\r\n"
    message = encrypt(secret, [Recipient(envelope_pki.cert(ALICE))], cipher="aes-256-gcm")
    tampered = message[:-1] + bytes((message[-1] ^ 1,))
    with pytest.raises(DecryptError) as caught:
        decrypt(tampered, [envelope_pki.key(ALICE)])
    assert b"Jeanne" not in repr(caught.value.__dict__).encode()
    assert caught.value.__cause__ is None


def test_recipient_infos_naming_our_key_too_often(envelope_pki: EnvelopePki) -> None:
    """Each matching recipient info costs a private-key operation: a message that names
    our certificate many times is refused before any of them (no amplification)."""
    recipients = [Recipient(envelope_pki.cert(ALICE))] * 9
    message = encrypt(MESSAGE, recipients, cipher="aes-256-cbc")
    assert "at most" in _fails(message, [envelope_pki.key(ALICE)])
    assert decrypt(
        encrypt(MESSAGE, recipients[:8], cipher="aes-256-cbc"), [envelope_pki.key(ALICE)]
    )
