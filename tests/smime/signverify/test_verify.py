"""Verification: round trips, and every way a signed message must come out invalid."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.smime import der, header_protection, mime, signer_certs, smime_parts, transfer
from gateway.smime.certnames import addresses_match, certificate_addresses
from gateway.smime.sign import sign, sign_der
from gateway.smime.types import CertStatus, Purpose
from gateway.smime.verify import verify, verify_parsed
from tests.smime.signverify import crafting
from tests.smime.signverify.identities import ALICE, BOB, EDDIE, NOBODY, AcceptAll, Reject, SignPki

TEXT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nCompte rendu: RAS.\r\n"
EIGHT_BIT = (
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    b"R\xc3\xa9sultats normaux.\nFrom here on, nothing.\n"
)


def _opaque_content_tampered(entity: bytes) -> bytes:
    parsed = mime.parse_entity(entity)
    cms_der = transfer.body_bytes(parsed)
    marker = b"RAS."
    assert marker in cms_der
    return smime_parts.pkcs7_mime_entity(cms_der.replace(marker, b"RAZ."), "signed-data")


@pytest.mark.parametrize("detached", [True, False])
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_round_trip(sv_pki: SignPki, sv_ec_pki: SignPki, kind: str, detached: bool) -> None:
    pki = sv_pki if kind == "rsa" else sv_ec_pki
    alice = pki[ALICE]
    signed = sign(
        TEXT,
        alice.cert,
        alice.key,
        pki.intermediates,
        detached=detached,
        encryption_cert=pki.enc[ALICE],
    )
    validator = AcceptAll()
    when = datetime.now(UTC)
    result = verify(signed, validator=validator, from_address=ALICE, at=when)
    assert result.valid, result.reason
    assert result.detached is detached
    assert result.content == TEXT
    assert result.from_address_bound
    (signer,) = result.signers
    assert signer.signature_valid and signer.certificate == alice.cert
    assert signer.digest_algorithm == "sha256"
    assert signer.signature_algorithm == ("rsassa_pkcs1v15" if kind == "rsa" else "ecdsa")
    assert signer.signing_time is not None
    assert signer.capabilities is not None and signer.capabilities.aes_gcm
    assert signer.email_addresses == (ALICE,)
    # the validator got the message's other certificates as untrusted, for signing, at `at`
    (call,) = validator.calls
    assert call[0] == alice.cert and call[2] is Purpose.SMIME_SIGN and call[3] == when
    untrusted = {c.serial_number for c in call[1]}
    assert {c.serial_number for c in pki.intermediates} <= untrusted
    assert alice.cert.serial_number not in untrusted


def test_ed25519_and_pss_round_trip(sv_pki: SignPki) -> None:
    eddie = sv_pki[EDDIE]
    result = verify(sign(TEXT, eddie.cert, eddie.key), validator=AcceptAll(), from_address=EDDIE)
    assert result.valid, result.reason
    assert result.signers[0].signature_algorithm == "ed25519"
    assert result.signers[0].digest_algorithm == "sha512"
    alice = sv_pki[ALICE]
    pss = sign(TEXT, alice.cert, alice.key, rsa_pss=True, detached=False)
    result = verify(pss, validator=AcceptAll(), from_address=ALICE)
    assert result.valid, result.reason
    assert result.signers[0].signature_algorithm == "rsassa_pss"


def test_tampered_body_detached(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key)
    result = verify(signed.replace(b"RAS.", b"RAZ."), validator=AcceptAll(), from_address=ALICE)
    assert not result.valid
    assert "digest mismatch" in result.reason
    assert not result.signers[0].signature_valid


def test_tampered_body_opaque(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key, detached=False)
    result = verify(_opaque_content_tampered(signed), validator=AcceptAll(), from_address=ALICE)
    assert not result.valid
    assert "digest mismatch" in result.reason


def test_tampered_signed_attribute(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    cms_der = sign_der(TEXT, alice.cert, alice.key, signing_time=when)
    original = der.utc_time(when)
    assert cms_der.count(original) == 1
    forged = cms_der.replace(original, der.utc_time(when.replace(year=2025)))
    result = verify(
        smime_parts.multipart_signed(TEXT, forged), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "the signature does not verify"


def test_swapped_certificate_same_key_fails_ess(sv_pki: SignPki) -> None:
    """Same key, another certificate: the signature verifies, signingCertificateV2 names
    the original certificate, so the swap is caught (RFC 5035)."""
    alice, twin = sv_pki[ALICE], sv_pki["alice-twin"]
    assert alice.cert != twin.cert
    cms_der = sign_der(TEXT, alice.cert, alice.key)
    alice_der = alice.cert.public_bytes(serialization.Encoding.DER)
    twin_der = twin.cert.public_bytes(serialization.Encoding.DER)
    alice_sid = crafting.issuer_serial(alice.cert)
    swapped = cms_der.replace(alice_der, twin_der).replace(
        alice_sid, crafting.issuer_serial(twin.cert)
    )
    assert swapped != cms_der
    result = verify(
        smime_parts.multipart_signed(TEXT, swapped), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "signingCertificate does not name the signer certificate"


def test_swapped_certificate_other_key(sv_pki: SignPki) -> None:
    alice, bob = sv_pki[ALICE], sv_pki[BOB]
    attributes = crafting.basic_attributes(TEXT)
    cms_der = crafting.craft_signed_data(
        TEXT,
        bob.cert,
        bob.key,
        attributes=attributes,
        certificates=[bob.cert],
        signature_key=alice.key,
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=BOB
    )
    assert not result.valid
    assert result.reason == "the signature does not verify"


def test_duplicate_attribute(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    attributes = crafting.basic_attributes(TEXT)
    attributes.append(crafting.attribute(crafting.SIGNING_TIME, der.utc_time(datetime.now(UTC))))
    cms_der = crafting.craft_signed_data(
        TEXT, alice.cert, alice.key, attributes=attributes, certificates=[alice.cert]
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "duplicate signed attribute signingTime"


def test_two_values_in_message_digest(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    digest = hashlib.sha256(TEXT).digest()
    attributes = [
        crafting.attribute(crafting.CONTENT_TYPE, der.oid(crafting.ID_DATA)),
        crafting.attribute(
            crafting.MESSAGE_DIGEST, der.octet_string(digest), der.octet_string(b"\x00" * 32)
        ),
    ]
    cms_der = crafting.craft_signed_data(
        TEXT, alice.cert, alice.key, attributes=attributes, certificates=[alice.cert]
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "messageDigest has 2 values, not 1"


def test_missing_message_digest(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    attributes = [
        a
        for a in crafting.basic_attributes(TEXT)
        if b"\x2a\x86\x48\x86\xf7\x0d\x01\x09\x04" not in a
    ]
    assert len(attributes) == 2
    cms_der = crafting.craft_signed_data(
        TEXT, alice.cert, alice.key, attributes=attributes, certificates=[alice.cert]
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "signed attributes without messageDigest"


def test_content_type_attribute_must_match(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    attributes = crafting.basic_attributes(TEXT)
    attributes[0] = crafting.attribute(crafting.CONTENT_TYPE, der.oid("1.2.840.113549.1.7.2"))
    cms_der = crafting.craft_signed_data(
        TEXT, alice.cert, alice.key, attributes=attributes, certificates=[alice.cert]
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert "contentType" in result.reason


def test_no_signed_attributes_is_checked_over_the_content(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    cms_der = crafting.craft_signed_data(
        TEXT, alice.cert, alice.key, attributes=None, certificates=[alice.cert]
    )
    good = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert good.valid, good.reason
    assert good.signers[0].signing_time is None
    bad = verify(
        smime_parts.multipart_signed(TEXT.replace(b"RAS", b"RAZ"), cms_der),
        validator=AcceptAll(),
        from_address=ALICE,
    )
    assert not bad.valid and bad.reason == "the signature does not verify"


def test_unknown_and_microsoft_attributes_are_ignored(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    attributes = crafting.basic_attributes(TEXT)
    attributes.append(
        crafting.attribute(crafting.MS_ENC_KEY_PREF, crafting.issuer_serial(alice.cert))
    )
    attributes.append(crafting.attribute("1.3.6.1.4.1.99999.1", der.explicit(0, der.null())))
    cms_der = crafting.craft_signed_data(
        TEXT, alice.cert, alice.key, attributes=attributes, certificates=[alice.cert]
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert result.valid, result.reason


def test_subject_key_identifier_sid(sv_ec_pki: SignPki) -> None:
    alice = sv_ec_pki[ALICE]
    cms_der = crafting.craft_signed_data(
        TEXT,
        alice.cert,
        alice.key,
        attributes=crafting.basic_attributes(TEXT),
        certificates=[alice.cert],
        sid=crafting.ski_sid(alice.cert),
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert result.valid, result.reason


def test_signer_certificate_absent(sv_pki: SignPki) -> None:
    alice, bob = sv_pki[ALICE], sv_pki[BOB]
    cms_der = crafting.craft_signed_data(
        TEXT,
        alice.cert,
        alice.key,
        attributes=crafting.basic_attributes(TEXT),
        certificates=[bob.cert],
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "the signer certificate is not in the message"


def test_sha1_digest_is_weak(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    cms_der = crafting.craft_signed_data(
        TEXT,
        alice.cert,
        alice.key,
        attributes=crafting.basic_attributes(TEXT, "sha1"),
        certificates=[alice.cert],
        digest="sha1",
    )
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der, "sha-1"),
        validator=AcceptAll(),
        from_address=ALICE,
    )
    assert not result.valid
    assert result.reason == "weak digest algorithm sha1"


def test_no_signers(sv_pki: SignPki) -> None:
    cms_der = crafting.signed_data_without_signers(TEXT, [sv_pki[ALICE].cert])
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "no signers"


@pytest.mark.parametrize(
    ("micalg", "valid"),
    [("sha-256", True), ("SHA256", True), ("sha-512", False), ("sha-256,sha-512", False)],
)
def test_micalg_must_match(sv_pki: SignPki, micalg: str, valid: bool) -> None:
    alice = sv_pki[ALICE]
    cms_der = sign_der(TEXT, alice.cert, alice.key)
    entity = smime_parts.multipart_signed(TEXT, cms_der, micalg.split(","))
    result = verify(entity, validator=AcceptAll(), from_address=ALICE)
    assert result.valid is valid, result.reason
    if not valid:
        assert result.reason == "micalg does not match the digest algorithm of the signature"
        assert result.signers[0].signature_valid  # the signature itself was fine


def test_micalg_missing(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key)
    result = verify(
        signed.replace(b'micalg="sha-256";', b""), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid and result.reason == "multipart/signed without micalg"


def test_wrong_from(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key)
    result = verify(signed, validator=AcceptAll(), from_address=BOB)
    assert not result.valid and not result.from_address_bound
    assert result.reason == f"no valid signer certificate is bound to {BOB}"
    assert result.signers[0].signature_valid


def test_from_domain_is_case_insensitive_local_part_is_not(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key)
    assert verify(signed, validator=AcceptAll(), from_address="alice.martin@CHU-A.test").valid
    assert not verify(signed, validator=AcceptAll(), from_address="Alice.Martin@chu-a.test").valid
    assert addresses_match("a@Example.TEST.", "a@example.test")
    assert not addresses_match("not-an-address", "not-an-address")


def test_from_taken_from_the_entity_when_not_given(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key)
    message = f"From: Alice <{ALICE}>\r\nTo: {BOB}\r\n".encode() + signed
    assert verify(message, validator=AcceptAll(), from_address=None).valid
    result = verify(signed, validator=AcceptAll(), from_address=None)
    assert not result.valid and result.reason == "no From address to bind the signer to"


def test_certificate_without_address_is_never_bound(sv_pki: SignPki) -> None:
    nobody = sv_pki[NOBODY]
    assert certificate_addresses(nobody.cert) == ()
    result = verify(sign(TEXT, nobody.cert, nobody.key), validator=AcceptAll(), from_address=NOBODY)
    assert not result.valid and not result.from_address_bound


@pytest.mark.parametrize(
    "status", [CertStatus.EXPIRED, CertStatus.UNTRUSTED, CertStatus.REVOKED, CertStatus.WRONG_USAGE]
)
def test_certificate_rejected_by_validator(sv_pki: SignPki, status: CertStatus) -> None:
    alice = sv_pki[ALICE]
    result = verify(
        sign(TEXT, alice.cert, alice.key), validator=Reject(status, "because"), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == f"signer certificate {status.value}: because"
    assert result.signers[0].signature_valid
    assert not result.from_address_bound


def test_no_validator_is_never_valid(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    result = verify(sign(TEXT, alice.cert, alice.key), validator=None, from_address=ALICE)
    assert not result.valid
    assert result.reason == "signer certificate not validated (no validator given)"
    assert result.signers[0].signature_valid and result.signers[0].certificate_validation is None


def test_8bit_made_7bit_survives_a_relay_rewriting_line_ends(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    signed = sign(EIGHT_BIT, alice.cert, alice.key)
    assert signed.isascii()
    as_stored = signed.replace(b"\r\n", b"\n")  # a maildir, or a relay that speaks LF
    result = verify(as_stored, validator=AcceptAll(), from_address=ALICE)
    assert result.valid, result.reason
    inner = mime.parse_entity(result.content)
    assert inner.transfer_encoding == "quoted-printable"
    assert transfer.body_bytes(inner) == b"R\xc3\xa9sultats normaux.\r\nFrom here on, nothing.\r\n"
    back = as_stored.replace(b"\n", b"\r\n")  # and back to CRLF on the next hop
    assert verify(back, validator=AcceptAll(), from_address=ALICE).valid


def test_header_protection_round_trip(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    protected = [("From", f"Alice <{ALICE}>"), ("To", BOB), ("Subject", "Patient Dupont, IRM")]
    payload = header_protection.with_protected_headers(TEXT, protected, "clear")
    result = verify(sign(payload, alice.cert, alice.key), validator=AcceptAll(), from_address=ALICE)
    assert result.valid, result.reason
    assert result.extra["hp"] == "clear"
    assert result.protected_headers == tuple(protected)


def test_header_protection_inner_from_must_be_bound(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    payload = header_protection.with_protected_headers(
        TEXT, [("From", BOB), ("Subject", "x")], "clear"
    )
    result = verify(sign(payload, alice.cert, alice.key), validator=AcceptAll(), from_address=ALICE)
    assert not result.valid
    assert result.reason == f"no valid signer certificate is bound to {BOB}"


def test_wrapped_message(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    inner = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: wrapped\r\n".encode() + TEXT
    wrapped = b"Content-Type: message/rfc822; forwarded=no\r\n\r\n" + inner
    result = verify(
        sign(wrapped, alice.cert, alice.key, detached=False),
        validator=AcceptAll(),
        from_address=ALICE,
    )
    assert result.valid, result.reason
    assert result.extra["wrapped"] == "message/rfc822"
    assert result.inner_message == inner
    assert ("Subject", "wrapped") in result.protected_headers


def test_wrapped_message_with_foreign_from(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE]
    inner = f"From: {BOB}\r\nSubject: forged\r\n".encode() + TEXT
    wrapped = b"Content-Type: message/rfc822\r\n\r\n" + inner
    result = verify(sign(wrapped, alice.cert, alice.key), validator=AcceptAll(), from_address=ALICE)
    assert not result.valid


@pytest.mark.parametrize(
    "entity",
    [
        b"",
        b"Content-Type: text/plain\r\n\r\nnot signed",
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nAAAA",
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(b"\x30\x80garbage"),
        b"Content-Type: multipart/signed; boundary=x\r\n\r\n--x\r\n\r\na\r\n--x--\r\n",
        b'Content-Type: multipart/signed; boundary=x; protocol="application/pkcs7-signature"'
        b"\r\n\r\n--x\r\n\r\na\r\n--x\r\nContent-Type: application/pkcs7-signature\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nMAA=\r\n--x--\r\n",
    ],
)
def test_malformed_input_is_invalid_not_an_exception(entity: bytes) -> None:
    result = verify(entity, validator=AcceptAll(), from_address=ALICE)
    assert not result.valid
    assert result.reason


def test_enveloped_cms_in_signed_data_clothing(sv_pki: SignPki) -> None:
    cms_der = der.sequence(der.oid("1.2.840.113549.1.7.3"), der.explicit(0, der.sequence()))
    entity = smime_parts.pkcs7_mime_entity(cms_der, "signed-data")
    result = verify(entity, validator=AcceptAll(), from_address=ALICE)
    assert not result.valid and "not signed-data" in result.reason


def _mangled_certificate(sv_pki: SignPki, how: str) -> bytes:
    cert_der = sv_pki[ALICE].cert.public_bytes(serialization.Encoding.DER)
    version = b"\xa0\x03\x02\x01\x02"
    at = cert_der.index(version)
    if how == "version":
        return cert_der[:at] + b"\xa0\x03\x02\x01\x42" + cert_der[at + 5 :]
    serial_at = at + len(version) + 2  # INTEGER tag and short length, then the value
    return cert_der[:serial_at] + b"\x80" + cert_der[serial_at + 1 :]  # negative serial


@pytest.mark.parametrize("how", ["version", "negative-serial"])
def test_unloadable_certificates_are_skipped(sv_pki: SignPki, how: str) -> None:
    """Found by fuzzing: cryptography raises InvalidVersion (not a ValueError) and warns
    on a negative serial; neither may escape ``verify`` (warnings are errors in tests)."""
    alice = sv_pki[ALICE]
    cms_der = sign_der(TEXT, alice.cert, alice.key)
    alice_der = alice.cert.public_bytes(serialization.Encoding.DER)
    mangled = cms_der.replace(alice_der, _mangled_certificate(sv_pki, how))
    assert mangled != cms_der
    result = verify(
        smime_parts.multipart_signed(TEXT, mangled), validator=AcceptAll(), from_address=ALICE
    )
    assert not result.valid
    assert result.reason == "the signer certificate is not in the message"


@pytest.mark.parametrize("how", ["version", "negative-serial"])
def test_unloadable_certificate_stays_skipped_when_seen_again(sv_pki: SignPki, how: str) -> None:
    """Message certificates are kept parsed per DER: an unusable one is still skipped the
    second time (the cache keeps the refusal, not a certificate), and the good one of
    another message is still found."""
    alice = sv_pki[ALICE]
    cms_der = sign_der(TEXT, alice.cert, alice.key)
    alice_der = alice.cert.public_bytes(serialization.Encoding.DER)
    mangled = cms_der.replace(alice_der, _mangled_certificate(sv_pki, how))
    for _ in range(2):
        entity = smime_parts.multipart_signed(TEXT, mangled)
        result = verify(entity, validator=AcceptAll(), from_address=ALICE)
        assert result.reason == "the signer certificate is not in the message"
        good = verify(
            smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
        )
        assert good.valid, good.reason


def test_capabilities_carry_each_message_signing_time(sv_pki: SignPki) -> None:
    """The smimeCapabilities value is parsed once per encoding; when it was learnt is
    still each message's own signingTime."""
    alice = sv_pki[ALICE]
    for when in (
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 6, 7, 8, 9, 10, tzinfo=UTC),
    ):
        signed = sign(TEXT, alice.cert, alice.key, sv_pki.intermediates, signing_time=when)
        result = verify(signed, validator=AcceptAll(), from_address=ALICE)
        (signer,) = result.signers
        assert result.valid, result.reason
        assert signer.capabilities is not None and signer.capabilities.learnt_at == when


@pytest.mark.parametrize("detached", [True, False])
def test_verify_parsed_gives_what_verify_gives(sv_pki: SignPki, detached: bool) -> None:
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key, sv_pki.intermediates, detached=detached)
    when = datetime.now(UTC)
    expected = verify(signed, validator=AcceptAll(), from_address=ALICE, at=when)
    parsed = mime.parse_entity(signed)
    result = verify_parsed(parsed, validator=AcceptAll(), from_address=ALICE, at=when)
    assert result == expected and result.valid
    tampered = mime.parse_entity(signed.replace(b"RAS.", b"RAZ.") if detached else b"")
    refused = verify_parsed(tampered, validator=AcceptAll(), from_address=ALICE, at=when)
    assert not refused.valid and refused.reason


def test_large_certificate_field_is_read_each_time_not_kept(sv_pki: SignPki) -> None:
    """A certificates field over ``MAX_CACHED_CERTIFICATES`` octets (hostile, or a huge
    chain) is verified the same way but never kept in the certificate cache."""
    alice = sv_pki[ALICE]
    chain = [alice.cert, *sv_pki.intermediates * 40]  # the CA certificates again and again
    attributes = crafting.basic_attributes(TEXT)
    cms_der = crafting.craft_signed_data(
        TEXT, alice.cert, alice.key, attributes=attributes, certificates=chain
    )
    assert len(cms_der) > signer_certs.MAX_CACHED_CERTIFICATES
    kept = dict(signer_certs._CERTIFICATE_SETS._entries)
    for _ in range(2):
        result = verify(
            smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
        )
        assert result.valid, result.reason
        assert result.signers[0].certificate == alice.cert
    assert dict(signer_certs._CERTIFICATE_SETS._entries).keys() <= kept.keys()
