"""CMS signed attributes (RFC 5652 §5.3, §11; RFC 8551 §2.5; RFC 5035): building ours,
reading a peer's.

Role:
- ``build_signed_attributes`` returns the DER ``SET OF Attribute`` that a signature covers
  (RFC 5652 §5.4: the signature is computed over this SET encoding; the SignerInfo
  carries the same octets with the tag changed to [0] IMPLICIT). Attributes: contentType,
  messageDigest, signingTime (UTCTime until 2049, RFC 5652 §11.3), smimeCapabilities
  (RFC 8551 §2.5.2), encryptionKeyPreference (RFC 8551 §2.5.3, IssuerAndSerialNumber
  choice) together with its Microsoft twin 1.3.6.1.4.1.311.16.4 that Outlook reads, and
  ESS signingCertificateV2 (RFC 5035 §5.4, SHA-256 of the signer certificate, with
  IssuerSerial). The SET is DER-sorted by ``der.set_of``. The attributes that are the
  same in every signature of one signer come from ``static_signed_attributes``, which
  ``gateway.smime.sign`` calls once per signer (its per-signer cache); only contentType,
  messageDigest and signingTime are encoded per message.
- ``parse_signed_attributes`` reads the attributes the verifier needs from the exact
  octets received, never calling asn1crypto's ``.native`` on the whole set (it raises on
  attributes it has no spec for, e.g. 1.3.6.1.4.1.311.16.4, measured): each attribute is
  split into its type OID and raw values, and only the known ones are decoded, one by one.
  The values a signer repeats in every message (smimeCapabilities, ESS
  signingCertificate(V2)) are decoded once per encoding (cached, values up to
  ``MAX_CACHED_VALUE`` octets so hostile ones cannot fill memory; the result depends on
  the octets alone; the signing time is attached per message).

Invariants (parsing): a problem is *reported* (``ParsedSignedAttributes.problems``), not
raised: a duplicate attribute type, a contentType/messageDigest/signingTime with other
than one value (RFC 5652 §11.1-§11.3), an undecodable known attribute. Unknown attributes
are ignored. A malformed smimeCapabilities is ignored too (it only costs the peer the
better algorithms). The caller decides that any problem makes the signature invalid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from hashlib import sha256
from typing import TypeVar

from asn1crypto import core, tsp
from cryptography import x509

from gateway.smime import ber, der
from gateway.smime.capabilities import (
    SmimeCapability,
    dotted_oid,
    encode_capabilities,
    parse_capabilities,
)
from gateway.smime.types import RecipientCapabilities

CONTENT_TYPE = "1.2.840.113549.1.9.3"
MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
SIGNING_TIME = "1.2.840.113549.1.9.5"
SMIME_CAPABILITIES = "1.2.840.113549.1.9.15"
ENCRYPTION_KEY_PREFERENCE = "1.2.840.113549.1.9.16.2.11"
SIGNING_CERTIFICATE = "1.2.840.113549.1.9.16.2.12"
SIGNING_CERTIFICATE_V2 = "1.2.840.113549.1.9.16.2.47"
MICROSOFT_ENCRYPTION_KEY_PREFERENCE = "1.3.6.1.4.1.311.16.4"

ID_DATA = "1.2.840.113549.1.7.1"
ID_SIGNED_DATA = "1.2.840.113549.1.7.2"

DIGEST_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
    "md5": "1.2.840.113549.2.5",
}
DIGEST_NAMES = {dotted: name for name, dotted in DIGEST_OIDS.items()}

ATTRIBUTE_NAMES = {
    CONTENT_TYPE: "contentType",
    MESSAGE_DIGEST: "messageDigest",
    SIGNING_TIME: "signingTime",
    SMIME_CAPABILITIES: "smimeCapabilities",
    ENCRYPTION_KEY_PREFERENCE: "encryptionKeyPreference",
    SIGNING_CERTIFICATE: "signingCertificate",
    SIGNING_CERTIFICATE_V2: "signingCertificateV2",
    MICROSOFT_ENCRYPTION_KEY_PREFERENCE: "microsoftEncryptionKeyPreference",
}
_SINGLE_VALUED = (CONTENT_TYPE, MESSAGE_DIGEST, SIGNING_TIME)

_T = TypeVar("_T")

# X.509 KeyUsage bits that allow a certificate to receive encrypted mail.
_ENCRYPTION_USAGES = ("key_encipherment", "key_agreement")


# --------------------------------------------------------------------------- building


def issuer_and_serial_number(certificate: x509.Certificate) -> bytes:
    """DER ``IssuerAndSerialNumber`` (RFC 5652 §10.2.4) of ``certificate``."""
    return der.sequence(certificate.issuer.public_bytes(), der.integer(certificate.serial_number))


def attribute(oid: str, *values: bytes) -> bytes:
    """DER ``Attribute ::= SEQUENCE { attrType OID, attrValues SET OF ANY }``."""
    return der.sequence(der.oid(oid), der.set_of(*values))


def _signing_time_value(moment: datetime) -> bytes:
    if 1950 <= moment.year <= 2049:
        return der.utc_time(moment)
    return der.generalized_time(moment)


def signing_certificate_v2(certificate: x509.Certificate, cert_der: bytes) -> bytes:
    """ESS ``SigningCertificateV2`` (RFC 5035 §5.4) naming ``certificate`` by its SHA-256
    hash (the DEFAULT algorithm, so omitted in DER) and its IssuerSerial."""
    issuer_serial = der.sequence(
        der.sequence(der.explicit(4, certificate.issuer.public_bytes())),  # GeneralNames
        der.integer(certificate.serial_number),
    )
    cert_id = der.sequence(der.octet_string(sha256(cert_der).digest()), issuer_serial)
    return der.sequence(der.sequence(cert_id))


def can_receive_encrypted(certificate: x509.Certificate) -> bool:
    """True when the certificate's key usage allows encryption to it (or says nothing)."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return any(getattr(usage, name) for name in _ENCRYPTION_USAGES)


def static_signed_attributes(
    signer_certificate: x509.Certificate,
    signer_der: bytes,
    capabilities: Sequence[SmimeCapability] | None,
    encryption_certificate: x509.Certificate | None,
) -> tuple[bytes, ...]:
    """The attributes that do not change from one message to the next for one signer:
    signingCertificateV2 (over ``signer_der``, the certificate's DER), smimeCapabilities
    (left out when ``capabilities`` is None), encryptionKeyPreference and its Microsoft
    twin. ``gateway.smime.sign`` encodes them once per signer (its per-signer cache).

    encryptionKeyPreference names ``encryption_certificate`` when given, else the signer
    certificate if its key usage allows encryption, else it is left out (a certificate
    that cannot receive encrypted mail must not be advertised for it)."""
    attributes = [
        attribute(SIGNING_CERTIFICATE_V2, signing_certificate_v2(signer_certificate, signer_der))
    ]
    if capabilities is not None:
        attributes.append(attribute(SMIME_CAPABILITIES, encode_capabilities(capabilities)))
    preferred = encryption_certificate
    if preferred is None and can_receive_encrypted(signer_certificate):
        preferred = signer_certificate
    if preferred is not None:
        ias = issuer_and_serial_number(preferred)
        # SMIMEEncryptionKeyPreference: issuerAndSerialNumber [0] IMPLICIT (RFC 8551 §2.5.3)
        attributes.append(attribute(ENCRYPTION_KEY_PREFERENCE, _retag(ias, 0xA0)))
        attributes.append(attribute(MICROSOFT_ENCRYPTION_KEY_PREFERENCE, ias))
    return tuple(attributes)


def build_signed_attributes(
    *,
    content_type: str,
    message_digest: bytes,
    signing_time: datetime,
    static_attributes: Sequence[bytes],
) -> bytes:
    """The DER ``SET OF Attribute`` to sign (RFC 5652 §5.4), sorted (X.690 §11.6): the
    three per-message attributes (contentType, messageDigest, signingTime) and the
    signer's ``static_attributes`` (from ``static_signed_attributes``)."""
    return der.set_of(
        _content_type_attribute(content_type),
        _single_valued_attribute(_MESSAGE_DIGEST_OID, der.octet_string(message_digest)),
        _single_valued_attribute(_SIGNING_TIME_OID, _signing_time_value(signing_time)),
        *static_attributes,
    )


_MESSAGE_DIGEST_OID = der.oid(MESSAGE_DIGEST)
_SIGNING_TIME_OID = der.oid(SIGNING_TIME)


@functools.lru_cache(maxsize=8)
def _content_type_attribute(content_type: str) -> bytes:
    return attribute(CONTENT_TYPE, der.oid(content_type))


def _single_valued_attribute(encoded_oid: bytes, value: bytes) -> bytes:
    """``attribute(oid, value)`` for one value, in one join (the same octets: a SET OF
    one member needs no sorting)."""
    values_header = der.header(der.SET, len(value))
    inner = len(encoded_oid) + len(values_header) + len(value)
    return b"".join((der.header(der.SEQUENCE, inner), encoded_oid, values_header, value))


def _retag(encoded: bytes, tag: int) -> bytes:
    """The same TLV with its (single-octet) identifier replaced: [n] IMPLICIT of a
    constructed value keeps its length and contents octets (X.690 §8.14)."""
    return bytes((tag,)) + encoded[1:]


def as_implicit_zero(signed_attributes_set: bytes) -> bytes:
    """The SignerInfo form of the signed attributes: [0] IMPLICIT instead of SET."""
    return _retag(signed_attributes_set, 0xA0)


# --------------------------------------------------------------------------- parsing


_MAX_ATTRIBUTES = 64
_MAX_VALUES = 16
_PARSE_CACHE_SIZE = 256  # attribute values parsed, kept by their encoding
MAX_CACHED_VALUE = 4096  # larger values are parsed each time (never kept)


def _children(buf: memoryview, parent: ber.Tlv, limit: int) -> list[ber.Tlv]:
    """``ber.children`` of ``parent`` (a loop without its generator: 14 calls a
    message), at most ``limit``."""
    if not parent.constructed:
        raise ValueError(f"element at {parent.start} is not constructed")
    items: list[ber.Tlv] = []
    pos, end = parent.content_start, parent.content_end
    while pos < end:
        item = ber.read_tlv(buf, pos, end)
        items.append(item)
        pos = item.end
    if len(items) > limit:
        raise ValueError(f"more than {limit} elements")
    return items


def _element_tlvs(buf: memoryview, limit: int) -> list[ber.Tlv]:
    """The complete TLVs concatenated in ``buf`` (BER/DER), at most ``limit``."""
    found: list[ber.Tlv] = []
    pos = 0
    end = len(buf)
    while pos < end:
        if len(found) == limit:
            raise ValueError(f"more than {limit} elements")
        element = ber.read_tlv(buf, pos, end)
        found.append(element)
        pos = element.end
    return found


def split_elements(contents: bytes, limit: int) -> list[bytes]:
    """The complete TLVs concatenated in ``contents`` (BER/DER), at most ``limit``;
    delimited with ``gateway.smime.ber``, never interpreted."""
    return [
        contents[element.start : element.end]
        for element in _element_tlvs(memoryview(contents), limit)
    ]


def _raw_attributes(contents: bytes) -> list[tuple[str, list[bytes]]]:
    """(type OID, raw values) of each Attribute in the SET's contents octets: one walk
    over one view of them (no copy of an Attribute before its values are cut out)."""
    view = memoryview(contents)
    attributes = []
    for attribute in _element_tlvs(view, _MAX_ATTRIBUTES):
        if not attribute.is_(ber.UNIVERSAL, 16):
            raise ValueError("an Attribute is not a SEQUENCE")
        members = _children(view, attribute, 2)
        if len(members) != 2:
            raise ValueError("an Attribute is not SEQUENCE { type, values }")
        oid_tlv, values_tlv = members
        if not oid_tlv.is_(ber.UNIVERSAL, 6) or not values_tlv.is_(ber.UNIVERSAL, 17):
            raise ValueError("an Attribute is not SEQUENCE { OID, SET }")
        values = _children(view, values_tlv, _MAX_VALUES)
        attributes.append(
            (
                dotted_oid(contents[oid_tlv.start : oid_tlv.end]),
                [contents[value.start : value.end] for value in values],
            )
        )
    return attributes


@dataclass(frozen=True)
class EssCertId:
    """One certificate named by an ESS signingCertificate(V2) attribute."""

    hash_algorithm: str  # "sha256", "sha1", ...
    cert_hash: bytes


@dataclass(frozen=True)
class ParsedSignedAttributes:
    """What the verifier needs from a SignerInfo's signed attributes."""

    content_type: str | None
    message_digest: bytes | None
    signing_time: datetime | None
    capabilities: RecipientCapabilities | None
    signing_certificates: tuple[EssCertId, ...]  # first entry of V2, else of V1
    types: tuple[str, ...]  # every attribute type present, dotted, in received order
    problems: tuple[str, ...]


def signed_attributes_set(contents: bytes) -> bytes:
    """The DER SET (tag 0x31) over the received [0] contents octets: what was signed."""
    return der.tlv(der.SET, contents)


def _attribute_name(oid: str) -> str:
    return ATTRIBUTE_NAMES.get(oid, oid)


def _ess_cert_ids(value: bytes, oid: str) -> tuple[EssCertId, ...]:
    """The first ESSCertID(v2) of an attribute value (cached per encoding when small: a
    signer sends the same value with every message, and the result depends on it alone)."""
    if len(value) > MAX_CACHED_VALUE:
        return _decode_ess_cert_ids(value, oid)
    return _cached_ess_cert_ids(value, oid)


def _decode_ess_cert_ids(value: bytes, oid: str) -> tuple[EssCertId, ...]:
    spec = tsp.SigningCertificateV2 if oid == SIGNING_CERTIFICATE_V2 else tsp.SigningCertificate
    first = spec.load(value)["certs"][0]
    algorithm = "sha1" if oid == SIGNING_CERTIFICATE else first["hash_algorithm"]["algorithm"]
    name = algorithm if isinstance(algorithm, str) else str(algorithm.native)
    return (EssCertId(hash_algorithm=name, cert_hash=bytes(first["cert_hash"].native)),)


_cached_ess_cert_ids = functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)(_decode_ess_cert_ids)


def parse_signed_attributes(contents: bytes) -> ParsedSignedAttributes:
    """Read the signed attributes from the contents octets of SignerInfo.signedAttrs.

    Raises ``ValueError`` (``ber.BerError`` is one) only when the SET itself cannot be
    parsed: not a SET OF SEQUENCE { OID, SET }, or over 64 attributes / 16 values each."""
    problems: list[str] = []
    seen: list[str] = []
    by_type: dict[str, list[bytes]] = {}
    for oid, values in _raw_attributes(contents):
        if oid in by_type:
            problems.append(f"duplicate signed attribute {_attribute_name(oid)}")
        seen.append(oid)
        by_type.setdefault(oid, []).extend(values)
    for oid in _SINGLE_VALUED:
        if seen.count(oid) == 1 and len(by_type[oid]) != 1:
            problems.append(f"{_attribute_name(oid)} has {len(by_type[oid])} values, not 1")
    content_type = _decode_one(by_type, CONTENT_TYPE, problems, _oid_value)
    digest = _decode_one(by_type, MESSAGE_DIGEST, problems, _octets_value)
    when = _decode_one(by_type, SIGNING_TIME, problems, _time_value)
    return ParsedSignedAttributes(
        content_type=content_type,
        message_digest=digest,
        signing_time=when,
        capabilities=_capabilities(by_type.get(SMIME_CAPABILITIES), when),
        signing_certificates=_signing_certificates(by_type, problems),
        types=tuple(seen),
        problems=tuple(problems),
    )


def _oid_value(value: bytes) -> str:
    """The contentType value: ``capabilities.dotted_oid`` (the same strict load, cached
    per encoding: every message names the same content type)."""
    return dotted_oid(value)


def _octets_value(value: bytes) -> bytes:
    return bytes(core.OctetString.load(value, strict=True).native)


_TIME_TYPES = {0x17: core.UTCTime, 0x18: core.GeneralizedTime}  # X.509 Time's choices


def _time_value(value: bytes) -> datetime:
    """``x509.Time`` (UTCTime or GeneralizedTime), loaded by the alternative its tag
    names (the constructed bit ignored, as the Choice ignores it): the same strict parse
    without the Choice's cost (measured: 8.2 -> 5.4 us)."""
    spec = _TIME_TYPES.get(value[0] & 0xDF) if value else None
    if spec is None:
        raise ValueError("signingTime is not a UTCTime or GeneralizedTime")
    moment = spec.load(value, strict=True).native
    if not isinstance(moment, datetime):
        raise ValueError("not a time")
    return moment


def _decode_one(
    by_type: dict[str, list[bytes]],
    oid: str,
    problems: list[str],
    decode: Callable[[bytes], _T],
) -> _T | None:
    values = by_type.get(oid)
    if not values or len(values) != 1:
        return None
    try:
        return decode(values[0])
    except (ValueError, TypeError, KeyError, OverflowError):
        problems.append(f"undecodable {_attribute_name(oid)}")
        return None


def _capabilities(
    values: list[bytes] | None, signing_time: datetime | None
) -> RecipientCapabilities | None:
    if not values or len(values) != 1:
        return None
    value = values[0]
    small = len(value) <= MAX_CACHED_VALUE
    parsed = _cached_capabilities(value) if small else _parsed_capabilities(value)
    return None if parsed is None else replace(parsed, learnt_at=signing_time)


def _parsed_capabilities(value: bytes) -> RecipientCapabilities | None:
    """``parse_capabilities`` of one value, None when malformed."""
    try:
        return parse_capabilities(value)
    except ValueError:
        return None


# a signer's client sends the same list with every message
_cached_capabilities = functools.lru_cache(maxsize=_PARSE_CACHE_SIZE)(_parsed_capabilities)


def _signing_certificates(
    by_type: dict[str, list[bytes]], problems: list[str]
) -> tuple[EssCertId, ...]:
    for oid in (SIGNING_CERTIFICATE_V2, SIGNING_CERTIFICATE):
        values = by_type.get(oid)
        if not values:
            continue
        try:
            return _ess_cert_ids(values[0], oid)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError):
            problems.append(f"undecodable {_attribute_name(oid)}")
            return ()
    return ()
