"""The framing of CMS EnvelopedData and AuthEnvelopedData, read for decryption
(RFC 5652 §3, §6.1; RFC 5083 §2.1, §2.2).

Role: ``parse_content_info`` turns a ContentInfo into the parts that decryption needs
(``Envelope``: the recipient infos, the content cipher's AlgorithmIdentifier, the
encrypted content as found, AuthEnvelopedData's AAD and mac), and the small BER readers
(``expect``, ``oid_text``, ``tlv_bytes``, ``octets``) and tag numbers are shared with
``gateway.smime.content_decryption`` and ``gateway.smime.recipient_infos``.
``gateway.smime.decrypt`` puts them together; this module imports none of them.

Parsing: accepts DER or BER with indefinite lengths and constructed OCTET STRINGs (NSS).
The framing is read with ``ber`` (zero-copy memoryviews: a 50 MB message is not copied
level by level as asn1crypto would, and the common case costs no asn1crypto parse);
authAttrs are re-encoded with asn1crypto (RFC 5083 §2.2: the AAD is their DER encoding
with the SET OF tag).

Failure contract: a structure that does not fit raises ``DecryptError`` (the cause in
``.detail``, for the local log only); ``gateway.smime.decrypt.decrypt`` turns any other
exception that hostile input may cause into the same ``DecryptError``.

Trust level: parses untrusted input; no keys, no I/O, no logging.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms, core

from gateway.smime import ber, der
from gateway.smime.types import DecryptError

OID_DATA = "1.2.840.113549.1.7.1"
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_AUTH_ENVELOPED_DATA = "1.2.840.113549.1.9.16.1.23"
_KNOWN_OIDS = (OID_DATA, OID_ENVELOPED_DATA, OID_AUTH_ENVELOPED_DATA)

SEQUENCE, SET, INTEGER, OCTET_STRING, OID = 16, 17, 2, 4, 6


@dataclass(frozen=True)
class Envelope:
    authenticated: bool
    recipient_infos: bytes  # BER/DER of the SET OF RecipientInfo
    content_type: str
    content_algorithm: bytes  # BER/DER AlgorithmIdentifier
    chunks: list[memoryview]  # the encrypted content, as found
    aad: bytes  # DER of authAttrs as a SET (RFC 5083 §2.2), b"" when absent
    mac: bytes  # AuthEnvelopedData's mac, b"" for EnvelopedData


def expect(element: ber.Tlv, tag_class: int, number: int, what: str) -> None:
    if not element.is_(tag_class, number):
        raise DecryptError(f"unexpected element where {what} belongs")


def oid_text(buf: memoryview, element: ber.Tlv) -> str:
    expect(element, ber.UNIVERSAL, OID, "an OBJECT IDENTIFIER")
    raw = bytes(buf[element.start : element.end])
    for known in _KNOWN_OIDS:  # the usual ones, without a parse
        if raw == der.oid(known):
            return known
    return str(core.ObjectIdentifier.load(raw).dotted)


def tlv_bytes(buf: memoryview, element: ber.Tlv) -> bytes:
    return bytes(buf[element.start : element.end])


def parse_content_info(buf: memoryview) -> Envelope:
    """ContentInfo (RFC 5652 §3) -> the parts of an (Auth)EnvelopedData."""
    top = ber.read_top(buf)
    expect(top, ber.UNIVERSAL, SEQUENCE, "ContentInfo")
    parts = ber.children(buf, top)
    if len(parts) != 2 or not parts[1].is_(ber.CONTEXT, 0):
        raise DecryptError("malformed ContentInfo")
    content_type = oid_text(buf, parts[0])
    if content_type not in (OID_ENVELOPED_DATA, OID_AUTH_ENVELOPED_DATA):
        raise DecryptError(f"content type {content_type} is not an encrypted message")
    inner = ber.children(buf, parts[1])
    if len(inner) != 1:
        raise DecryptError("malformed ContentInfo content")
    expect(inner[0], ber.UNIVERSAL, SEQUENCE, "EnvelopedData")
    return _parse_envelope(buf, inner[0], content_type == OID_AUTH_ENVELOPED_DATA)


def _parse_envelope(buf: memoryview, envelope: ber.Tlv, authenticated: bool) -> Envelope:
    """EnvelopedData (RFC 5652 §6.1) or AuthEnvelopedData (RFC 5083 §2.1)."""
    fields = ber.children(buf, envelope)
    index = 0

    def take(tag_class: int, number: int, optional: bool = False) -> ber.Tlv | None:
        nonlocal index
        if index < len(fields) and fields[index].is_(tag_class, number):
            index += 1
            return fields[index - 1]
        if optional:
            return None
        raise DecryptError("malformed (Auth)EnvelopedData")

    take(ber.UNIVERSAL, INTEGER)  # version: not needed to decrypt
    take(ber.CONTEXT, 0, optional=True)  # originatorInfo: certificates we do not need
    infos = take(ber.UNIVERSAL, SET)
    content_info = take(ber.UNIVERSAL, SEQUENCE)
    assert infos is not None and content_info is not None
    auth_attrs = mac = None
    if authenticated:
        auth_attrs = take(ber.CONTEXT, 1, optional=True)
        mac = take(ber.UNIVERSAL, OCTET_STRING)
        take(ber.CONTEXT, 2, optional=True)  # unauthAttrs: nothing we use
    else:
        take(ber.CONTEXT, 1, optional=True)  # unprotectedAttrs: nothing we use
    if index != len(fields):
        raise DecryptError("unexpected elements in (Auth)EnvelopedData")
    content_type, algorithm, chunks = _parse_encrypted_content_info(buf, content_info)
    return Envelope(
        authenticated=authenticated,
        recipient_infos=tlv_bytes(buf, infos),
        content_type=content_type,
        content_algorithm=algorithm,
        chunks=chunks,
        aad=_auth_attrs_aad(buf, auth_attrs) if auth_attrs is not None else b"",
        mac=b"".join(ber.octet_string_chunks(buf, mac)) if mac is not None else b"",
    )


def _parse_encrypted_content_info(
    buf: memoryview, element: ber.Tlv
) -> tuple[str, bytes, list[memoryview]]:
    """EncryptedContentInfo (RFC 5652 §6.1): (content type, algorithm, content chunks)."""
    parts = ber.children(buf, element)
    if len(parts) != 3 or not parts[2].is_(ber.CONTEXT, 0):
        raise DecryptError("EncryptedContentInfo without its encrypted content")
    expect(parts[1], ber.UNIVERSAL, SEQUENCE, "contentEncryptionAlgorithm")
    return oid_text(buf, parts[0]), tlv_bytes(buf, parts[1]), ber.octet_string_chunks(buf, parts[2])


def _auth_attrs_aad(buf: memoryview, element: ber.Tlv) -> bytes:
    """RFC 5083 §2.2: the AAD is the DER encoding of authAttrs with the SET OF tag."""
    raw = tlv_bytes(buf, element)
    attributes = cms.CMSAttributes.load(b"\x31" + raw[1:])
    return bytes(attributes.dump(force=True))


def octets(buf: memoryview, element: ber.Tlv) -> bytes:
    """The contents of an OCTET STRING (primitive or constructed) as bytes."""
    expect(element, ber.UNIVERSAL, OCTET_STRING, "an OCTET STRING")
    return b"".join(ber.octet_string_chunks(buf, element))
