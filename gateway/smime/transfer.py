"""Content-transfer encodings of the S/MIME engine (RFC 2045 §6): base64,
quoted-printable, the decoding of an entity's body, and the 7-bit form of an entity to be
signed (``make_7bit``, RFC 8551 §3.1.1-§3.1.2).

Role: pure functions over ``bytes`` (no I/O); used by the signer, the verifier, the
encryptor and the decryptor. Built on ``mime`` (entity model, multipart splitting,
header-block editing); imports no other MIME module.

Base64 uses ``pybase64`` (SIMD, ~5x faster than the stdlib on 10 MB, measured) when
installed, else ``binascii`` on 57-byte chunks; it is written block by block into a
``BytesIO`` so that a 50 MB body costs its output once (1.4x the input), not twice
(measured 2.7x with one ``encodebytes`` + ``replace``).

Invariants:
- every entity this module returns is CRLF-canonical (RFC 5322 §2.3, RFC 8551 §3.1.1);
- ``make_7bit`` changes only what would not survive a 7-bit relay: a leaf whose body holds
  8-bit octets, NUL, or lines over 998 octets (RFC 5322 §2.1.1) is re-encoded
  (quoted-printable for text/*, base64 otherwise, RFC 8551 §3.1.2); every other part
  keeps its exact bytes, so a signature computed over it stays valid;
- a multipart is rebuilt by replacing the spans of its changed parts only: preamble,
  delimiters, transport padding and epilogue are kept byte for byte.

Security notes: nothing trusts lengths from the input; everything is found by searching,
bounded by the input. Malformed input (bad base64, a multipart without its boundary)
raises ``MalformedMessage`` with a short text that names no content. Header fields with
raw 8-bit octets (RFC 6532) inside the signed entity are left as they are: they cannot be
made 7-bit without changing what the user wrote, and relays do not rewrite the header
fields of body parts.
"""

from __future__ import annotations

import binascii
import io

from gateway.smime.mime import (
    CRLF,
    MimeEntity,
    canonicalize_crlf,
    parse_entity,
    replace_header_field,
    split_multipart,
)
from gateway.smime.types import MalformedMessage

try:  # pragma: no cover - which branch runs depends on the environment
    import pybase64 as _pybase64

    _HAVE_PYBASE64 = True
except ImportError:  # pragma: no cover
    _HAVE_PYBASE64 = False

_MAX_LINE = 998  # RFC 5322 §2.1.1, octets without the CRLF
_BASE64_LINE_INPUT = 57  # 57 input octets -> one 76-character line (RFC 2045 §6.8)
_BASE64_BLOCK = 57 * 2048  # whole lines per block; small enough to stay in cache
_LONG_LINE_PROBE = 499  # any run of > 998 non-LF octets contains an aligned 499-octet block


# --------------------------------------------------------------------------- base64


def _base64_block(block: memoryview) -> bytes:
    """Base64 lines (CRLF) of a block whose length is a multiple of 57 (or the last)."""
    if _HAVE_PYBASE64:
        return _pybase64.encodebytes(block).replace(b"\n", CRLF)
    encode = binascii.b2a_base64
    lines = [
        encode(block[i : i + _BASE64_LINE_INPUT], newline=False)
        for i in range(0, len(block), _BASE64_LINE_INPUT)
    ]
    lines.append(b"")
    return CRLF.join(lines)


def write_base64_lines(out: io.BytesIO, data: bytes | memoryview) -> None:
    """Append the base64 of ``data`` to ``out`` in 76-character CRLF lines (RFC 2045
    §6.8), block by block: the peak memory is the output plus one small block."""
    view = memoryview(data)
    for start in range(0, len(view), _BASE64_BLOCK):
        out.write(_base64_block(view[start : start + _BASE64_BLOCK]))


def base64_lines(data: bytes | memoryview) -> bytes:
    """Base64 of ``data`` in 76-character lines, each ending in CRLF (RFC 2045 §6.8);
    empty input gives empty output."""
    out = io.BytesIO()
    write_base64_lines(out, data)
    return out.getvalue()


def base64_decode(text: bytes | memoryview) -> bytes:
    """Decode base64 that may hold line ends and whitespace (RFC 2045 §6.8: other
    characters are ignored); incorrect padding raises ``MalformedMessage``."""
    try:
        if _HAVE_PYBASE64:
            return bytes(_pybase64.b64decode(text, validate=False))
        return binascii.a2b_base64(text)
    except (binascii.Error, ValueError):
        raise MalformedMessage("bad base64 content") from None


# --------------------------------------------------------------------------- quoted-printable


def quoted_printable(text: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7) of CRLF-canonical text, line breaks kept as hard
    breaks; a line starting with "From " is protected (=46) against mbox munging."""
    encoded = binascii.b2a_qp(text, quotetabs=False, istext=True, header=False)
    if b"\n" in encoded and b"\r\n" not in encoded:  # b2a_qp follows the input's first EOL
        encoded = encoded.replace(b"\n", CRLF)
    if encoded.startswith(b"From "):
        encoded = b"=46" + encoded[1:]
    return encoded.replace(b"\r\nFrom ", b"\r\n=46rom ")


# --------------------------------------------------------------------------- decoding


def _decode_body(entity: MimeEntity) -> bytes:
    encoding = entity.transfer_encoding
    if encoding == "base64":
        return base64_decode(entity.body_view)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(entity.body)
    return entity.body


def body_bytes(entity: MimeEntity) -> bytes:
    """The entity's body with its Content-Transfer-Encoding removed (base64,
    quoted-printable, or the raw octets for 7bit/8bit/binary)."""
    return _decode_body(entity)


# --------------------------------------------------------------------------- 7-bit


def _has_long_line(data: bytes, start: int, end: int) -> bool:
    """True when some line of ``data[start:end]`` exceeds 998 octets. Probes aligned
    499-octet blocks for a LF (any longer run contains one such block), then measures the
    one line around a LF-free block, so 10 MB cost ~20k ``find`` calls, not a line split."""
    if end - start <= _MAX_LINE:
        return False
    find = data.find
    for block in range(start, end, _LONG_LINE_PROBE):
        block_end = min(block + _LONG_LINE_PROBE, end)
        if block_end - block < _LONG_LINE_PROBE or find(b"\n", block, block_end) >= 0:
            continue
        line_start = data.rfind(b"\n", start, block) + 1 or start
        line_end = find(b"\n", block_end, end)
        line_end = end if line_end < 0 else line_end - 1  # exclude the CR of CRLF
        if line_end - line_start > _MAX_LINE:
            return True
    return False


def _is_7bit_clean(data: bytes, start: int, end: int) -> bool:
    """7bit data per RFC 2045 §2.7: US-ASCII without NUL, lines of at most 998 octets."""
    span = data if start == 0 and end == len(data) else data[start:end]
    if not span.isascii() or b"\x00" in span:
        return False
    return not _has_long_line(data, start, end)


def _reencode_leaf(entity: MimeEntity) -> bytes:
    raw = _decode_body(entity)
    if entity.content_type.startswith("text/"):
        body, encoding = quoted_printable(canonicalize_crlf(raw)), "quoted-printable"
    else:
        body, encoding = base64_lines(raw)[:-2], "base64"  # the delimiter brings its CRLF
    header = replace_header_field(entity.header, "Content-Transfer-Encoding", encoding)
    return b"".join((header, CRLF, body))


def _entity_7bit(data: bytes, start: int, end: int, default_type: str) -> bytes | None:
    """The 7-bit form of ``data[start:end]``, or ``None`` when it is already 7-bit."""
    entity = parse_entity(data, start, end, default_type=default_type)
    content_type = entity.content_type
    if content_type.startswith("multipart/"):
        return _multipart_7bit(entity)
    if content_type in ("message/rfc822", "message/global"):
        inner = _entity_7bit(data, entity.body_start, end, "text/plain")
        if inner is None:
            return None  # already 7-bit inside (a declared "8bit" is then harmless)
        header = entity.header
        if entity.transfer_encoding in ("8bit", "binary"):
            header = replace_header_field(header, "Content-Transfer-Encoding", "7bit")
        return b"".join((header, CRLF, inner))
    if _is_7bit_clean(data, entity.body_start, end):
        return None
    return _reencode_leaf(entity)


def _multipart_7bit(entity: MimeEntity) -> bytes | None:
    boundary = entity.param("boundary")
    if not boundary:
        if _is_7bit_clean(entity.data, entity.body_start, entity.body_end):
            return None
        raise MalformedMessage("multipart entity without a boundary")
    spans = split_multipart(entity.data, boundary, entity.body_start, entity.body_end)
    child_default = "message/rfc822" if entity.content_type == "multipart/digest" else "text/plain"
    pieces: list[bytes] = []
    cursor = entity.body_start
    changed = False
    for part_start, part_end in spans.parts:
        new_part = _entity_7bit(entity.data, part_start, part_end, child_default)
        if new_part is None:
            continue
        changed = True
        pieces += [entity.data[cursor:part_start], new_part]
        cursor = part_end
    if not changed:
        return None
    pieces.append(entity.data[cursor : entity.body_end])
    header = entity.header
    if entity.transfer_encoding in ("8bit", "binary"):
        header = replace_header_field(header, "Content-Transfer-Encoding", "7bit")
    return b"".join((header, CRLF, *pieces))


def make_7bit(entity: bytes) -> bytes:
    """The CRLF-canonical, 7-bit-clean form of a MIME entity (RFC 8551 §3.1.1-§3.1.2),
    recursing through multiparts and message/rfc822; unchanged parts keep their bytes and
    a fully 7-bit entity is returned without a copy."""
    canonical = canonicalize_crlf(entity)
    result = _entity_7bit(canonical, 0, len(canonical), "text/plain")
    return canonical if result is None else result
