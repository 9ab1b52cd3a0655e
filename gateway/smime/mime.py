"""MIME plumbing of the S/MIME engine: canonical form, 7-bit transfer encoding, base64,
the two S/MIME wrappers (multipart/signed and application/pkcs7-mime) and the parsing of
an incoming S/MIME entity.

Role: pure functions over ``bytes`` (no I/O); used by the signer, the verifier, the
encryptor and the decryptor.

Why bytes and not the ``email`` package: on a 10 MB or 50 MB message a full
``email`` parse and generate costs several hundred milliseconds and several copies of
the message (it is what dominates cryptography's own S/MIME writer, measured). Here the
hot path works on the raw bytes: the header block is split from the body at the first
empty line, multipart bodies are cut at their boundary delimiters (RFC 2046 §5.1.1) with
``bytes.find``, and only the small header blocks are read into an ``email`` (compat32
policy) ``Message`` to get Content-Type parameters (RFC 2045 §5.1, RFC 2231): a plain
block by hand (``plain_header_message``, the feed parser's exact result at a third of
its cost, measured), any other by ``email``'s parser. The Content-Type parameters are
read once per entity (``MimeEntity.param``): a plain value by hand (``plain_parameters``,
``get_params``' exact result 4-5x cheaper, measured), any other by ``email``. Base64 uses
``pybase64`` (SIMD, ~5x faster than the stdlib on 10 MB, measured) when installed, else
``binascii`` on 57-byte chunks; it is written block by block into a ``BytesIO`` so
that a 50 MB body costs its output once (1.4x the input), not twice (measured 2.7x with
one ``encodebytes`` + ``replace``).

Invariants:
- every entity this module returns is CRLF-canonical (RFC 5322 §2.3, RFC 8551 §3.1.1);
- ``make_7bit`` changes only what would not survive a 7-bit relay: a leaf whose body holds
  8-bit octets, NUL, or lines over 998 octets (RFC 5322 §2.1.1) is re-encoded
  (quoted-printable for text/*, base64 otherwise, RFC 8551 §3.1.2); every other part
  keeps its exact bytes, so a signature computed over it stays valid;
- a multipart is rebuilt by replacing the spans of its changed parts only: preamble,
  delimiters, transport padding and epilogue are kept byte for byte.

Security notes: the parser never trusts lengths from the input; everything is found by
searching, bounded by the input. Malformed structures raise ``MalformedMessage`` with a
short text that names no content (the verifier turns it into an *invalid* result).
Header fields with raw 8-bit octets (RFC 6532) inside the signed entity are left as they
are: they cannot be made 7-bit without changing what the user wrote, and relays do not
rewrite the header fields of body parts.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import email.utils
import enum
import functools
import io
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import Message

from gateway.smime.types import MalformedMessage

try:  # pragma: no cover - which branch runs depends on the environment
    import pybase64 as _pybase64

    _HAVE_PYBASE64 = True
except ImportError:  # pragma: no cover
    _HAVE_PYBASE64 = False

CRLF = b"\r\n"
_BLANK_LINE = b"\r\n\r\n"
_MAX_LINE = 998  # RFC 5322 §2.1.1, octets without the CRLF
_BASE64_LINE_INPUT = 57  # 57 input octets -> one 76-character line (RFC 2045 §6.8)
_BASE64_BLOCK = 57 * 2048  # whole lines per block; small enough to stay in cache
_LONG_LINE_PROBE = 499  # any run of > 998 non-LF octets contains an aligned 499-octet block

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
_HEADER_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_HEADER_PARSER = email.parser.BytesHeaderParser(policy=email.policy.compat32)
_FIELD_START = re.compile(r"([\x21-\x39\x3b-\x7e]+):")  # ftext, then the colon
_BLANKS = r"[ \t\r\n]*"
_ATTRIBUTE_CHARACTERS = r"-A-Za-z0-9!#$%&'+.^_`|~"  # RFC 2045 §5.1 token without "*" (RFC 2231)
_PLAIN_MEDIA_TYPE = re.compile(rf"{_BLANKS}([{_ATTRIBUTE_CHARACTERS}*/]+){_BLANKS}")
_PLAIN_PARAMETER = re.compile(
    rf";{_BLANKS}([{_ATTRIBUTE_CHARACTERS}]+){_BLANKS}={_BLANKS}"
    rf'([{_ATTRIBUTE_CHARACTERS}*]+|"[\t\x20\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]*"){_BLANKS}'
)

# A parameter value as ``email``'s ``get_params`` gives it: text, or (charset, language,
# text) for an RFC 2231 extended value.
ParameterValue = str | tuple[str | None, str | None, str]


# --------------------------------------------------------------------------- line ends


def is_crlf_canonical(data: bytes) -> bool:
    """True when every CR is followed by LF and every LF preceded by CR.

    Three C passes (LF, CR and CRLF counts: 35 us on 24 KB, the CRLF count 21 of them,
    measured). Tried and not kept: keeping only the CR and LF octets (``translate``
    with deletions) loses which octets were next to each other; comparing a CR map
    with an LF map shifted by one octet (two ``translate`` calls a 64 KB block) took
    28 us, ~15 us a received message, below what ``process_inbound`` can show."""
    lf = data.count(b"\n")  # one-octet counts first: they are the cheap ones
    return lf == data.count(b"\r") and lf == data.count(CRLF)


def canonicalize_crlf(data: bytes) -> bytes:
    """Return ``data`` with every line end (CRLF, bare LF, bare CR) as CRLF (RFC 5322 §2.3,
    RFC 8551 §3.1.1). Already-canonical input is returned as is, without a copy."""
    if is_crlf_canonical(data):
        return data
    if b"\r" not in data:
        return data.replace(b"\n", CRLF)
    return data.replace(CRLF, b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)


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


# --------------------------------------------------------------------------- entities


@dataclass(frozen=True)
class MimeEntity:
    """One MIME entity, as spans of a CRLF-canonical buffer (no copy of the body).

    ``header`` is the header block with the CRLF ending its last field, without the
    empty line; ``body_start``/``body_end`` delimit the body inside ``data``. ``fields``
    is never changed once the entity is built: its Content-Type parameters are cached
    on first use."""

    data: bytes
    header: bytes
    body_start: int
    body_end: int
    fields: Message = field(repr=False)
    default_type: str = "text/plain"

    @property
    def body(self) -> bytes:
        """The body as ``bytes`` (a copy unless it is the whole buffer)."""
        if self.body_start == 0 and self.body_end == len(self.data):
            return self.data
        return self.data[self.body_start : self.body_end]

    @property
    def body_view(self) -> memoryview:
        """The body without a copy (for hashing and base64 decoding)."""
        return memoryview(self.data)[self.body_start : self.body_end]

    @property
    def content_type(self) -> str:
        """Lower-case ``type/subtype``; the default when absent or unparsable (RFC 2045 §5.2)."""
        raw = self.fields.get("Content-Type")
        if raw is None:
            return self.default_type
        value = str(raw).split(";", 1)[0].strip().lower()
        if value.count("/") != 1 or not all(value.split("/")):
            return "text/plain"
        return value

    def param(self, name: str) -> str | None:
        """A Content-Type parameter, RFC 2231 continuations and charsets collapsed: what
        ``email``'s ``get_param(name, header="content-type")`` then
        ``collapse_rfc2231_value`` give (the first parameter of that name, compared
        case-insensitively), None when absent or when ``email`` fails on the value."""
        parameters = self._content_type_parameters
        if parameters is None:
            return None
        wanted = name.lower()
        for key, value in parameters:
            if key.lower() == wanted:
                return _collapsed(value)
        return None

    @functools.cached_property
    def _content_type_parameters(self) -> Sequence[tuple[str, ParameterValue]] | None:
        """The Content-Type parameters, read once per entity (a multipart/signed has its
        boundary, protocol and micalg read): ``email``'s ``get_params()``, or the same
        list by ``plain_parameters`` when the value is plain. None when the field is
        absent or ``email`` fails on it."""
        raw = self.fields.get("Content-Type")
        if raw is None:
            return None
        if isinstance(raw, str):
            plain = plain_parameters(raw)
            if plain is not None:
                return plain
        try:
            return self.fields.get_params(header="content-type")
        except (ValueError, LookupError, TypeError):  # hostile RFC 2231 encodings
            return None

    @property
    def transfer_encoding(self) -> str:
        """Lower-case Content-Transfer-Encoding, "7bit" when absent (RFC 2045 §6.1)."""
        raw = self.fields.get("Content-Transfer-Encoding")
        return str(raw).strip().lower() if raw is not None else "7bit"

    def header_values(self, name: str) -> list[str]:
        """Every value of header field ``name`` (unfolded, as text)."""
        return [str(value) for value in self.fields.get_all(name, [])]


def _collapsed(value: ParameterValue) -> str | None:
    """``email.utils.collapse_rfc2231_value`` of a ``get_params`` value (str as is)."""
    if isinstance(value, str):
        return value
    try:
        return email.utils.collapse_rfc2231_value(value)
    except (ValueError, LookupError, TypeError):  # a charset whose codec fails
        return None


def plain_parameters(value: str) -> list[tuple[str, str]] | None:
    """What ``email``'s ``Message.get_params()`` (compat32) returns for the Content-Type
    ``value``, or None when the value is not *plain*.

    Plain: ``type/subtype`` (token characters and "/"), then ``; name=value`` items where
    the name is an RFC 2045 §5.1 token without "*" (so no RFC 2231 continuation or
    charset, RFC 2231 §3-§4) and the value a token or a quoted string of printable ASCII
    or tab without '"', "\\" or ";"; blanks and line ends around every item. Then
    ``email``'s result is fixed: the media type with an empty value first, then each
    (lower-case name, value without its quotes), duplicates kept in order. Written by
    hand because ``email`` has no cheaper entry point (its reading costs 4-5x more,
    measured); ``tests/smime/signverify/test_mime_params.py`` compares the two."""
    head = _PLAIN_MEDIA_TYPE.match(value)
    if head is None:
        return None
    parameters = [(head.group(1), "")]
    position = head.end()
    while position < len(value):
        item = _PLAIN_PARAMETER.match(value, position)
        if item is None:
            return None
        name, text = item.groups()
        parameters.append((name.lower(), text[1:-1] if text[0] == '"' else text))
        position = item.end()
    return parameters


def split_header_body(data: bytes, start: int = 0, end: int | None = None) -> tuple[bytes, int]:
    """Split the entity ``data[start:end]`` (CRLF-canonical) at its first empty line.

    Returns the header block (ending in CRLF, or empty) and the offset of the body. An
    entity that starts with CRLF has no header fields (RFC 2046 §5.1.1); one without an
    empty line is all header."""
    stop = len(data) if end is None else end
    if data.startswith(CRLF, start, stop):
        return b"", start + 2
    blank = data.find(_BLANK_LINE, start, stop)
    if blank < 0:
        tail = data[start:stop]
        return (tail if tail.endswith(CRLF) or not tail else tail + CRLF), stop
    return data[start : blank + 2], blank + 4


def parse_entity(
    data: bytes, start: int = 0, end: int | None = None, *, default_type: str = "text/plain"
) -> MimeEntity:
    """Parse the header block of the entity ``data[start:end]``; the body stays a span."""
    stop = len(data) if end is None else end
    header, body_start = split_header_body(data, start, stop)
    return MimeEntity(
        data=data,
        header=header,
        body_start=body_start,
        body_end=stop,
        fields=_parse_header_block(header),
        default_type=default_type,
    )


def _parse_header_block(header: bytes) -> Message:
    """The fields of a header block as ``email`` (compat32) reads them.

    A *plain* block (``plain_header_message``) is read by hand, the same way, without
    the feed parser's machinery (about 3x cheaper, measured; the outbound agent parses
    a few blocks per message); anything else goes to ``email``, whose result is the
    reference (``tests/relay/test_one_pass.py`` compares the two on generated and
    hostile blocks)."""
    plain = plain_header_message(header)
    if plain is not None:
        return plain
    try:
        return _HEADER_PARSER.parsebytes(header + CRLF)
    except (ValueError, LookupError, TypeError):  # pragma: no cover - compat32 is lenient
        raise MalformedMessage("unparsable header block") from None


def plain_header_message(header: bytes) -> Message | None:
    """The ``Message`` that ``BytesHeaderParser(policy=compat32)`` builds from
    ``header + CRLF``, or None when the block is not *plain*.

    Plain: CRLF line ends only (no bare CR or LF), every line either a continuation
    (starting with space or tab, never the first line) or ``name:`` with a name of
    RFC 5322 §3.6.8 ftext (no unix ``From `` line, no line without a colon, no empty
    name). Then the feed parser's result is fixed: one ``set_raw`` per field with the
    value of ``Compat32.header_source_parse`` (text after the colon, leading blanks
    removed, continuation lines kept with their CRLF, trailing CR/LF removed; bytes
    decoded as ASCII with surrogateescape, as ``BytesParser`` does) and an empty
    payload. Written by hand because ``email`` has no cheaper entry point."""
    if not header:
        return _message_of([])
    if not header.endswith(CRLF):
        return None
    text = header.decode("ascii", "surrogateescape")
    fields: list[tuple[str, list[str]]] = []
    for line in text[:-2].split("\r\n"):
        if "\n" in line or "\r" in line:
            return None
        if line[:1] in (" ", "\t"):
            if not fields:
                return None
            fields[-1][1].append(line + "\r\n")
            continue
        match = _FIELD_START.match(line)
        if match is None:
            return None
        fields.append((match.group(1), [line[match.end() :].lstrip(" \t") + "\r\n"]))
    return _message_of([(name, "".join(lines).rstrip("\r\n")) for name, lines in fields])


def _message_of(fields: list[tuple[str, str]]) -> Message:
    message = Message(policy=email.policy.compat32)
    for name, value in fields:
        message.set_raw(name, value)
    message.set_payload("")
    return message


# --------------------------------------------------------------------------- multipart


@dataclass(frozen=True)
class MultipartSpans:
    """Where the body parts of a multipart body lie in the buffer (RFC 2046 §5.1.1):
    each span excludes the CRLF that belongs to the following delimiter."""

    parts: tuple[tuple[int, int], ...]
    closed: bool  # a close delimiter was found


def _delimiter_line_end(data: bytes, at: int, dash_boundary: bytes, stop: int) -> int | None:
    """If a delimiter line starts at ``at``, the offset of its end (its CRLF or ``stop``);
    ``None`` when the boundary text is only a prefix of a longer line."""
    after = at + len(dash_boundary)
    line_end = data.find(CRLF, after, stop)
    if line_end < 0:
        line_end = stop
    rest = data[after:line_end]
    if rest.startswith(b"--") or not rest.strip(b" \t"):
        return line_end
    return None


def _next_delimiter(data: bytes, dash_boundary: bytes, pos: int, stop: int) -> int:
    """Offset of the CRLF preceding the next delimiter line at or after ``pos``, or -1."""
    needle = CRLF + dash_boundary
    while True:
        found = data.find(needle, pos, stop)
        if found < 0:
            return -1
        if _delimiter_line_end(data, found + 2, dash_boundary, stop) is not None:
            return found
        pos = found + 1


def split_multipart(data: bytes, boundary: str, start: int, end: int) -> MultipartSpans:
    """Find the body parts of the multipart body ``data[start:end]``.

    Raises ``MalformedMessage`` when no opening delimiter is found."""
    try:
        dash_boundary = b"--" + boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MalformedMessage("non-ASCII multipart boundary") from None
    if data.startswith(dash_boundary, start, end) and (
        _delimiter_line_end(data, start, dash_boundary, end) is not None
    ):
        line_start = start
    else:
        crlf = _next_delimiter(data, dash_boundary, start, end)
        if crlf < 0:
            raise MalformedMessage("multipart body without its boundary")
        line_start = crlf + 2
    parts: list[tuple[int, int]] = []
    while True:
        line_end = _delimiter_line_end(data, line_start, dash_boundary, end)
        if line_end is None:  # pragma: no cover - every line_start is a checked delimiter
            raise MalformedMessage("multipart delimiter lost")
        if data.startswith(b"--", line_start + len(dash_boundary), end):
            return MultipartSpans(tuple(parts), closed=True)
        part_start = min(line_end + 2, end)
        crlf = _next_delimiter(data, dash_boundary, line_end, end)
        if crlf < 0:
            parts.append((part_start, end))
            return MultipartSpans(tuple(parts), closed=False)
        parts.append((part_start, max(part_start, crlf)))
        line_start = crlf + 2


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


def _decode_body(entity: MimeEntity) -> bytes:
    encoding = entity.transfer_encoding
    if encoding == "base64":
        return base64_decode(entity.body_view)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(entity.body)
    return entity.body


def quoted_printable(text: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7) of CRLF-canonical text, line breaks kept as hard
    breaks; a line starting with "From " is protected (=46) against mbox munging."""
    encoded = binascii.b2a_qp(text, quotetabs=False, istext=True, header=False)
    if b"\n" in encoded and b"\r\n" not in encoded:  # b2a_qp follows the input's first EOL
        encoded = encoded.replace(b"\n", CRLF)
    if encoded.startswith(b"From "):
        encoded = b"=46" + encoded[1:]
    return encoded.replace(b"\r\nFrom ", b"\r\n=46rom ")


def replace_header_field(header: bytes, name: str, value: str | None) -> bytes:
    """Header block with every field ``name`` removed and, when ``value`` is given, one
    ``name: value`` put where the first one was (else at the end)."""
    wanted = name.lower().encode("ascii")
    lines = header.split(CRLF)
    if lines and lines[-1] == b"":
        lines.pop()
    kept: list[bytes] = []
    inserted = value is None
    dropping = False
    new_line = f"{name}: {value}".encode("ascii") if value is not None else b""
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        field_name = line.split(b":", 1)[0].strip().lower()
        dropping = field_name == wanted
        if dropping and not inserted:
            kept.append(new_line)
            inserted = True
        elif not dropping:
            kept.append(line)
    if not inserted:
        kept.append(new_line)
    return CRLF.join(kept) + CRLF if kept else b""


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


def body_bytes(entity: MimeEntity) -> bytes:
    """The entity's body with its Content-Transfer-Encoding removed (base64,
    quoted-printable, or the raw octets for 7bit/8bit/binary)."""
    return _decode_body(entity)


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


# --------------------------------------------------------------------------- headers


def header_fields(entity: MimeEntity) -> list[tuple[str, str]]:
    """Every header field of the entity, in order, as (name, unfolded value)."""
    return [(name, _unfold(str(value))) for name, value in entity.fields.items()]


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """Split an RFC 5322 message into (its non-MIME header fields, its MIME entity).

    The entity keeps MIME-Version and the Content-* fields and the body; the other fields
    (From, To, Subject, Date, ...) are returned as a header block, ready to be put on the
    outside of the S/MIME wrapper (or inside, for header protection). Both are
    CRLF-canonical, whatever the line ends of ``message``."""
    canonical = canonicalize_crlf(message)
    header, body_start = split_header_body(canonical)
    outer: list[bytes] = []
    mime: list[bytes] = []
    target = outer
    for line in header.split(CRLF)[:-1] if header else []:
        if line[:1] not in (b" ", b"\t"):
            name = line.split(b":", 1)[0].strip().lower()
            target = mime if name.startswith(b"content-") or name == b"mime-version" else outer
        target.append(line)
    return _lines_block(outer), b"".join((_lines_block(mime), CRLF, canonical[body_start:]))


def _lines_block(lines: list[bytes]) -> bytes:
    return b"".join(line + CRLF for line in lines)


def with_protected_headers(
    entity: bytes,
    headers: Iterable[tuple[str, str]] | bytes,
    hp: str = "clear",
    *,
    canonical_entity: bool = False,
) -> bytes:
    """RFC 9788 §2: the entity with the protected header fields added to its header block
    and ``hp="clear"`` (signed only) or ``hp="cipher"`` (to be encrypted) on its
    Content-Type, ready to be signed (and encrypted) as the Cryptographic Payload.

    ``canonical_entity=True``: the caller vouches that ``entity`` is CRLF-canonical (the
    entity ``split_message`` returns is), which spares three passes over the body."""
    if hp not in ("clear", "cipher"):
        raise ValueError(f"hp must be 'clear' or 'cipher', not {hp!r}")
    canonical = entity if canonical_entity else canonicalize_crlf(entity)
    parsed = parse_entity(canonical)
    if isinstance(headers, bytes):
        protected = canonicalize_crlf(headers)
        if protected and not protected.endswith(CRLF):
            protected += CRLF
    else:
        protected = b"".join(_header_line(name, value) for name, value in headers)
    content_type = parsed.fields.get("Content-Type")
    base = _unfold(str(content_type)) if content_type is not None else "text/plain"
    base = re.sub(r';\s*hp\s*=\s*("[^"]*"|[^;\s]*)', "", base, flags=re.IGNORECASE)
    new_header = replace_header_field(parsed.header, "Content-Type", f'{base}; hp="{hp}"')
    return b"".join((protected, new_header, CRLF, canonical[parsed.body_start :]))


def _header_line(name: str, value: str) -> bytes:
    if not _HEADER_NAME.fullmatch(name.encode("ascii", "replace")):
        raise ValueError(f"bad header field name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"line break in the value of {name}")
    return f"{name}: {value}\r\n".encode()


def header_protection_mode(entity: MimeEntity) -> str | None:
    """The RFC 9788 ``hp`` parameter of the Cryptographic Payload ("clear" or "cipher"),
    ``None`` when the sender did not use header protection."""
    value = entity.param("hp")
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in ("clear", "cipher") else None


def protected_header_fields(entity: MimeEntity) -> list[tuple[str, str]]:
    """The header fields of a Cryptographic Payload or a wrapped message other than its
    MIME fields (RFC 9788 §2.2: these are the protected ones; HP-Outer fields included)."""
    return [
        (name, value)
        for name, value in header_fields(entity)
        if not name.lower().startswith("content-") and name.lower() != "mime-version"
    ]
