"""The signer's certificate found by its sid, what is read of it once per certificate
(``gateway.smime.signer_certs.KnownCertificate``): the answers stay those of the rules
(RFC 5652 §5.3 sid matching, RFC 5035 ESS hash) whether the certificates field of a
message was seen before or not."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.smime import der, mime, smime_parts
from gateway.smime.sign import sign
from gateway.smime.verify import verify
from tests.smime.signverify import crafting
from tests.smime.signverify.identities import ALICE, AcceptAll, SignPki

TEXT = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nCompte rendu: RAS.\r\n"
SIGNING_CERTIFICATE_V2 = "1.2.840.113549.1.9.16.2.47"


def _verified(pki: SignPki, cms_der: bytes) -> tuple[bool, str]:
    result = verify(
        smime_parts.multipart_signed(TEXT, cms_der), validator=AcceptAll(), from_address=ALICE
    )
    return result.valid, result.reason


def _signed(
    pki: SignPki,
    *,
    sid: bytes | None = None,
    attributes: list[bytes] | None = None,
) -> bytes:
    alice = pki[ALICE]
    return crafting.craft_signed_data(
        TEXT,
        alice.cert,
        alice.key,
        attributes=attributes if attributes is not None else crafting.basic_attributes(TEXT),
        certificates=[*pki.intermediates, alice.cert],  # the signer is not the first
        sid=sid,
    )


def _lower_case_name(name: x509.Name) -> bytes:
    """The same name (RFC 5280 §7.1 compares case-insensitively) in other octets."""
    rdns = [
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(a.oid, str(a.value).lower(), a._type) for a in rdn]
        )
        for rdn in name.rdns
    ]
    return x509.Name(rdns).public_bytes()


def _non_minimal_integer(value: int) -> bytes:
    """An INTEGER with one leading zero octet too many (BER allows it to be read)."""
    minimal = der.integer(value)
    return der.tlv(der.INTEGER, b"\x00" + minimal[2:])


def test_sid_in_other_octets_still_names_the_signer(sv_pki: SignPki) -> None:
    """The IssuerAndSerialNumber octets differ from the certificate's own: the name and
    serial comparison still finds it, first with a cold then with a warm cache."""
    alice = sv_pki[ALICE].cert
    sids = (
        der.sequence(_lower_case_name(alice.issuer), der.integer(alice.serial_number)),
        der.sequence(alice.issuer.public_bytes(), _non_minimal_integer(alice.serial_number)),
    )
    for sid in sids:
        assert sid != crafting.issuer_serial(alice)
        for _ in range(2):
            assert _verified(sv_pki, _signed(sv_pki, sid=sid)) == (True, "")


def test_sid_naming_another_serial_or_issuer_finds_nothing(sv_pki: SignPki) -> None:
    alice = sv_pki[ALICE].cert
    assert _verified(sv_pki, _signed(sv_pki)) == (True, "")  # the cache is warm
    other_serial = der.sequence(alice.issuer.public_bytes(), der.integer(alice.serial_number + 1))
    other_issuer = der.sequence(alice.subject.public_bytes(), der.integer(alice.serial_number))
    for sid in (other_serial, other_issuer):
        assert _verified(sv_pki, _signed(sv_pki, sid=sid)) == (
            False,
            "the signer certificate is not in the message",
        )


def _ess_attribute(cert_hash: bytes) -> bytes:
    """signingCertificateV2 with one ESSCertIDv2 (SHA-256 by default, RFC 5035 §5.4)."""
    cert_id = der.sequence(der.octet_string(cert_hash))
    return crafting.attribute(SIGNING_CERTIFICATE_V2, der.sequence(der.sequence(cert_id)))


def test_ess_hash_is_checked_every_time_with_the_certificates_kept(sv_pki: SignPki) -> None:
    """The ESS hash of a certificate is computed once and kept with it: a message naming
    another certificate is refused between two that name the signer."""
    alice_der = sv_pki[ALICE].cert.public_bytes(serialization.Encoding.DER)
    right = hashlib.sha256(alice_der).digest()
    wrong = hashlib.sha256(alice_der + b"x").digest()
    for cert_hash, expected in (
        (right, (True, "")),
        (wrong, (False, "signingCertificate does not name the signer certificate")),
        (right, (True, "")),
    ):
        attributes = [*crafting.basic_attributes(TEXT), _ess_attribute(cert_hash)]
        assert _verified(sv_pki, _signed(sv_pki, attributes=attributes)) == expected


def test_the_validator_is_offered_the_other_certificates(sv_pki: SignPki) -> None:
    validator = AcceptAll()
    cms_der = _signed(sv_pki)
    for _ in range(2):
        result = verify(
            smime_parts.multipart_signed(TEXT, cms_der), validator=validator, from_address=ALICE
        )
        assert result.valid, result.reason
    assert [call[1] for call in validator.calls] == [tuple(sv_pki.intermediates)] * 2


def test_the_content_entity_is_the_content_parsed(sv_pki: SignPki) -> None:
    """``VerifyResult.content_entity`` is what ``mime.parse_entity(content)`` gives, for
    the part a detached signature covers and for an opaque signature's eContent."""
    alice = sv_pki[ALICE]
    for detached in (True, False):
        signed = sign(TEXT, alice.cert, alice.key, sv_pki.intermediates, detached=detached)
        result = verify(signed, validator=AcceptAll(), from_address=ALICE)
        assert result.valid, result.reason
        entity = result.content_entity
        assert entity is not None and entity.data is result.content
        again = mime.parse_entity(result.content)
        assert (entity.header, entity.body_start, entity.body_end) == (
            again.header,
            again.body_start,
            again.body_end,
        )
        assert entity.fields.items() == again.fields.items()


def test_each_entity_keeps_its_own_content_type() -> None:
    """``MimeEntity.content_type`` is read once per entity: entities over one buffer
    (a multipart's parts) each answer their own."""
    signed = smime_parts.multipart_signed(TEXT, b"\x30\x00")
    top = mime.parse_entity(signed)
    assert top.content_type == "multipart/signed" == top.content_type
    parts = smime_parts.parse_multipart_signed(top)
    content = mime.parse_entity(top.data, parts.content_start, parts.content_end)
    assert content.content_type == "text/plain" == content.content_type
    assert top.content_type == "multipart/signed"
