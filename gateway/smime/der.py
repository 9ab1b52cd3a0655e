"""A tiny, fast DER encoder (ITU-T X.690 §8 and §10) for the structures the S/MIME engine
builds: CMS ContentInfo, EnvelopedData, AuthEnvelopedData, SignedData and their attributes.

Role: *output only*. Input is parsed with asn1crypto (see ``gateway.smime.asn1``); building
with asn1crypto 1.5.1 costs ~4.6 ms per message (a known upstream slowness), so the
engine assembles its DER here from already-encoded parts. Written by hand because no
maintained library offers a plain, allocation-light DER writer; it is deliberately small.

Invariants:
- every function returns one complete, definite-length DER TLV as ``bytes``;
- lengths use the shortest form (X.690 §10.1); INTEGERs the shortest two's complement
  (§8.3.2); SET OF members are sorted by their encodings (§11.6);
- a value is copied once: the header is computed from the content's length and joined to
  it in a single ``b"".join``. For very large contents (tens of MB), callers can avoid
  even the nested copies by computing ``header(tag, length)`` for each level and joining
  all pieces once (see ``gateway.smime.encrypt``);
- times must be timezone-aware; they are converted to UTC (X.690 §11.7-11.8: "Z" form,
  GeneralizedTime fractions without trailing zeros, UTCTime without fractions).

Security note: the encoder never parses, so it cannot be fed hostile input; misuse
(negative tag, naive datetime, malformed OID text) raises ``ValueError``.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

# Universal tags (X.680 §8.4), identifier octets for the primitive/constructed forms used.
BOOLEAN = 0x01
INTEGER = 0x02
BIT_STRING = 0x03
OCTET_STRING = 0x04
NULL = 0x05
OBJECT_IDENTIFIER = 0x06
UTF8_STRING = 0x0C
PRINTABLE_STRING = 0x13
IA5_STRING = 0x16
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
SEQUENCE = 0x30
SET = 0x31

_CONTEXT = 0x80
_CONSTRUCTED = 0x20

_NULL_TLV = b"\x05\x00"


def _length_octets(length: int) -> bytes:
    """Definite length, short form below 128, else long form with minimal octets."""
    if length < 0x80:
        return bytes((length,))
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _identifier_octets(tag: int) -> bytes:
    """``tag`` is the identifier octet(s) as a big-endian integer (0x30, 0xA0, 0xBF1F...)."""
    if tag < 0:
        raise ValueError(f"negative tag {tag}")
    if tag <= 0xFF:
        return bytes((tag,))
    return tag.to_bytes((tag.bit_length() + 7) // 8, "big")


def header(tag: int, length: int) -> bytes:
    """Identifier and length octets of a TLV whose content is ``length`` bytes long."""
    if 0 <= length < 0x80 and 0 <= tag <= 0xFF:  # the common case, in one allocation
        return bytes((tag, length))
    if length < 0:
        raise ValueError(f"negative length {length}")
    return _identifier_octets(tag) + _length_octets(length)


def tlv(tag: int, content: bytes) -> bytes:
    """One TLV: identifier ``tag`` (already encoded, as an int) and ``content``."""
    return b"".join((header(tag, len(content)), content))


def _constructed(tag: int, parts: tuple[bytes, ...]) -> bytes:
    size = sum(len(part) for part in parts)
    return b"".join((header(tag, size), *parts))


def sequence(*parts: bytes) -> bytes:
    """SEQUENCE of already-encoded members, in the given order."""
    return _constructed(SEQUENCE, parts)


def set_of(*parts: bytes) -> bytes:
    """SET OF already-encoded members, sorted by their encodings (X.690 §11.6).

    Python's ordering of ``bytes`` matches the rule (compare as octet strings; a shorter
    encoding that is a prefix sorts first, as trailing zero padding would make it)."""
    return _constructed(SET, tuple(sorted(parts)))


def octet_string(value: bytes) -> bytes:
    """OCTET STRING, primitive (DER never uses the constructed form)."""
    return tlv(OCTET_STRING, value)


def bit_string(value: bytes, unused_bits: int = 0) -> bytes:
    """BIT STRING from whole octets (``unused_bits`` trailing bits of the last octet unused)."""
    if not 0 <= unused_bits <= 7 or (unused_bits and not value):
        raise ValueError(f"bad unused bit count {unused_bits}")
    return b"".join((header(BIT_STRING, len(value) + 1), bytes((unused_bits,)), value))


def integer(value: int) -> bytes:
    """INTEGER, shortest two's complement form (X.690 §8.3.2)."""
    magnitude = value if value >= 0 else ~value
    size = magnitude.bit_length() // 8 + 1
    return tlv(INTEGER, value.to_bytes(size, "big", signed=True))


def boolean(value: bool) -> bytes:
    """BOOLEAN; DER encodes TRUE as 0xFF (X.690 §11.1)."""
    return b"\x01\x01\xff" if value else b"\x01\x01\x00"


def null() -> bytes:
    """NULL."""
    return _NULL_TLV


@functools.lru_cache(maxsize=512)
def oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER from its dotted text ("1.2.840.113549.1.7.3"); cached, since the
    engine encodes the same few dozen OIDs over and over."""
    try:
        arcs = [int(arc) for arc in dotted.split(".")]
    except ValueError:
        raise ValueError(f"malformed OID {dotted!r}") from None
    if len(arcs) < 2 or any(arc < 0 for arc in arcs) or arcs[0] > 2:
        raise ValueError(f"malformed OID {dotted!r}")
    if arcs[0] < 2 and arcs[1] >= 40:
        raise ValueError(f"malformed OID {dotted!r}")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        body += _base128(arc)
    return tlv(OBJECT_IDENTIFIER, bytes(body))


def _base128(value: int) -> bytes:
    """One OID sub-identifier: base 128, high bit set on all octets but the last."""
    octets = [value & 0x7F]
    value >>= 7
    while value:
        octets.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(octets))


def utf8_string(text: str) -> bytes:
    """UTF8String."""
    return tlv(UTF8_STRING, text.encode("utf-8"))


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a DER time needs a timezone-aware datetime")
    return moment.astimezone(UTC)


def utc_time(moment: datetime) -> bytes:
    """UTCTime "YYMMDDHHMMSSZ" (X.690 §11.8; RFC 5280 §4.1.2.5.1: years 1950-2049 only).
    Fractions of a second are dropped: UTCTime has none."""
    when = _as_utc(moment)
    if not 1950 <= when.year <= 2049:
        raise ValueError(f"UTCTime cannot hold the year {when.year}")
    return tlv(UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))


def generalized_time(moment: datetime) -> bytes:
    """GeneralizedTime "YYYYMMDDHHMMSS[.f]Z" (X.690 §11.7: fraction without trailing
    zeros, none when zero)."""
    when = _as_utc(moment)
    text = f"{when.year:04d}{when.strftime('%m%d%H%M%S')}"
    if when.microsecond:
        text += "." + f"{when.microsecond:06d}".rstrip("0")
    return tlv(GENERALIZED_TIME, (text + "Z").encode("ascii"))


def _context_tag(number: int, constructed: bool) -> int:
    """Identifier of a context-specific tag as an int (high-tag-number form from 31 on)."""
    if number < 0:
        raise ValueError(f"negative tag number {number}")
    first = _CONTEXT | (_CONSTRUCTED if constructed else 0)
    if number < 31:
        return first | number
    return int.from_bytes(bytes((first | 0x1F,)) + _base128(number), "big")


def explicit(number: int, content: bytes) -> bytes:
    """[number] EXPLICIT: a constructed context-specific TLV around a complete TLV."""
    return tlv(_context_tag(number, True), content)


def implicit(number: int, content: bytes, constructed: bool) -> bytes:
    """[number] IMPLICIT: ``content`` is the *contents* of the retagged value (without
    its own header); ``constructed`` keeps the form of the original type (True for a
    SEQUENCE/SET, False for an OCTET STRING or INTEGER)."""
    return tlv(_context_tag(number, constructed), content)


def context_header(number: int, constructed: bool, length: int) -> bytes:
    """Header of a context-specific TLV, for callers that join large pieces themselves."""
    return header(_context_tag(number, constructed), length)
