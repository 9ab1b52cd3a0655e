"""The S/MIME entities (RFC 8551 §3): the two wrappers the engine writes,
``multipart/signed`` (RFC 1847 §2.1, RFC 8551 §3.5.3) and ``application/pkcs7-mime``
(RFC 8551 §3.2), and the parsing of an incoming S/MIME entity (its kind, its smime-type,
the two parts of a multipart/signed).

Role: pure functions over ``bytes`` (no I/O); used by the signer, the verifier, the
encryptor and the decryptor. Built on ``mime`` and ``transfer``.

Invariants:
- every entity this module returns is CRLF-canonical (RFC 5322 §2.3, RFC 8551 §3.1.1).

Security notes: the parser never trusts lengths from the input; everything is found by
searching, bounded by the input. Malformed structures raise ``MalformedMessage`` with a
short text that names no content (the verifier turns it into an *invalid* result). A
parameter written into a header field (micalg, boundary, file name) must match a token
grammar first, so no caller can inject a header line.
"""

from __future__ import annotations

import enum
import io
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.smime.mime import MimeEntity, parse_entity, split_multipart
from gateway.smime.transfer import base64_lines, body_bytes, write_base64_lines
from gateway.smime.types import MalformedMessage

SMIME_TYPES = frozenset(
    {"signed-data", "enveloped-data", "authEnveloped-data", "compressed-data", "certs-only"}
)
SIGNATURE_PROTOCOLS = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
PKCS7_MIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})

# RFC 8551 §3.5.3.1 micalg names of the digests the engine knows.
MICALG_BY_DIGEST = {
    "sha1": "sha-1",
    "sha224": "sha-224",
    "sha256": "sha-256",
    "sha384": "sha-384",
    "sha512": "sha-512",
    "md5": "md5",
}

_SAFE_PARAMETER = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_SAFE_FILENAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


# --------------------------------------------------------------------------- building


def _check_parameter(value: str, what: str) -> None:
    if not _SAFE_PARAMETER.fullmatch(value):
        raise ValueError(f"unsafe {what} {value!r}")


def pkcs7_mime_entity(der: bytes, smime_type: str, name: str = "smime.p7m") -> bytes:
    """An ``application/pkcs7-mime`` entity (RFC 8551 §3.2) carrying ``der`` in base64:
    header fields, empty line, base64 body in 76-character CRLF lines."""
    if smime_type not in SMIME_TYPES:
        raise ValueError(f"unknown smime-type {smime_type!r}")
    if not _SAFE_FILENAME.fullmatch(name):
        raise ValueError(f"unsafe file name {name!r}")
    header = (
        f'Content-Type: application/pkcs7-mime; smime-type={smime_type}; name="{name}"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment; filename="{name}"\r\n'
        "\r\n"
    ).encode("ascii")
    out = io.BytesIO()
    out.write(header)
    write_base64_lines(out, der)
    return out.getvalue()  # CPython hands over the buffer itself: no final copy


def new_boundary(content: bytes) -> str:
    """A random boundary that does not occur in ``content`` (RFC 2046 §5.1.1)."""
    while True:
        boundary = "----=_smime_" + secrets.token_hex(16)
        if boundary.encode("ascii") not in content:
            return boundary


def multipart_signed(
    content: bytes,
    signature_der: bytes,
    micalg: str | Sequence[str] = "sha-256",
    *,
    boundary: str | None = None,
) -> bytes:
    """A ``multipart/signed`` entity (RFC 1847 §2.1, RFC 8551 §3.5.3): ``content`` (the
    exact signed bytes, CRLF-canonical, 7-bit) then the detached signature."""
    micalgs = (micalg,) if isinstance(micalg, str) else tuple(micalg)
    for value in micalgs:
        _check_parameter(value, "micalg")
    if boundary is None:
        chosen = new_boundary(content)
    else:
        _check_parameter(boundary, "boundary")
        if boundary.encode("ascii") in content:
            raise ValueError("boundary occurs in the content")
        chosen = boundary
    micalg_text = ",".join(micalgs)
    head = (
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
        f'micalg="{micalg_text}";\r\n boundary="{chosen}"\r\n'
        "\r\n"
        "This is a cryptographically signed message in MIME format.\r\n"
        "\r\n"
        f"--{chosen}\r\n"
    ).encode("ascii")
    signature_part = (
        f"\r\n--{chosen}\r\n"
        'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="smime.p7s"\r\n'
        "Content-Description: S/MIME Cryptographic Signature\r\n"
        "\r\n"
    ).encode("ascii")
    tail = f"--{chosen}--\r\n".encode("ascii")
    return b"".join((head, content, signature_part, base64_lines(signature_der), tail))


# --------------------------------------------------------------------------- incoming


class SmimeKind(enum.Enum):
    """What an incoming entity is, as far as S/MIME is concerned."""

    MULTIPART_SIGNED = "multipart-signed"
    PKCS7_MIME = "pkcs7-mime"  # opaque signed, enveloped, authEnveloped, compressed, certs
    RFC822 = "message-rfc822"  # a wrapped message (RFC 8551 §3.1, Direct)
    OTHER = "other"


@dataclass(frozen=True)
class SignedParts:
    """The two parts of a multipart/signed entity (RFC 1847 §2.1)."""

    content_start: int  # span of the signed bytes in ``entity.data``
    content_end: int
    signature: bytes  # the decoded signature (DER or BER)
    protocol: str
    micalgs: tuple[str, ...]  # lower case, as listed in the micalg parameter
    entity: MimeEntity

    @property
    def content(self) -> bytes:
        return self.entity.data[self.content_start : self.content_end]

    @property
    def content_view(self) -> memoryview:
        return memoryview(self.entity.data)[self.content_start : self.content_end]


def smime_kind(entity: MimeEntity) -> SmimeKind:
    """Classify an entity by its Content-Type (RFC 8551 §3.2.1-§3.2.2: the x- forms and
    application/octet-stream with a .p7m name are accepted from older senders)."""
    content_type = entity.content_type
    if content_type == "multipart/signed":
        return SmimeKind.MULTIPART_SIGNED
    if content_type in PKCS7_MIME_TYPES:
        return SmimeKind.PKCS7_MIME
    if content_type == "application/octet-stream":
        name = entity.param("name") or _disposition_filename(entity) or ""
        if name.lower().endswith(".p7m"):
            return SmimeKind.PKCS7_MIME
    if content_type == "message/rfc822":
        return SmimeKind.RFC822
    return SmimeKind.OTHER


def _disposition_filename(entity: MimeEntity) -> str | None:
    try:
        value = entity.fields.get_param("filename", header="content-disposition")
    except (ValueError, LookupError, TypeError):
        return None
    return value if isinstance(value, str) else None


def smime_type(entity: MimeEntity) -> str | None:
    """The smime-type parameter, with RFC 8551's case for authEnveloped-data restored."""
    value = entity.param("smime-type")
    if value is None:
        return None
    by_lower = {known.lower(): known for known in SMIME_TYPES}
    return by_lower.get(value.strip().lower(), value.strip())


def parse_multipart_signed(entity: MimeEntity) -> SignedParts:
    """The signed content span and the signature of a multipart/signed entity; exactly
    two body parts are required (RFC 1847 §2.1). Raises ``MalformedMessage``."""
    boundary = entity.param("boundary")
    if not boundary:
        raise MalformedMessage("multipart/signed without a boundary")
    spans = split_multipart(entity.data, boundary, entity.body_start, entity.body_end)
    if len(spans.parts) != 2:
        raise MalformedMessage(f"multipart/signed with {len(spans.parts)} parts instead of 2")
    (content_start, content_end), (sig_start, sig_end) = spans.parts
    signature_entity = parse_entity(entity.data, sig_start, sig_end)
    if signature_entity.content_type not in SIGNATURE_PROTOCOLS:
        raise MalformedMessage("the second part of multipart/signed is not a pkcs7-signature")
    protocol = (entity.param("protocol") or "").strip().lower()
    micalg = (entity.param("micalg") or "").strip().lower()
    return SignedParts(
        content_start=content_start,
        content_end=content_end,
        signature=body_bytes(signature_entity),
        protocol=protocol,
        micalgs=tuple(value.strip() for value in micalg.split(",") if value.strip()),
        entity=entity,
    )
