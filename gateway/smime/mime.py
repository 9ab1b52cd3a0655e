"""MIME entity model of the S/MIME engine: canonical line ends, the parsing of an entity
(header block, Content-Type parameters) and of a multipart body, and the editing of a
header block.

Role: pure functions over ``bytes`` (no I/O); used by the signer, the verifier, the
encryptor and the decryptor. The lowest of the MIME modules: ``transfer``
(content-transfer encodings, the 7-bit form), ``smime_parts`` (the S/MIME wrappers) and
``header_protection`` (RFC 9788) build on it; it imports none of them.

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
``get_params``' exact result 4-5x cheaper, measured), any other by ``email``.

Invariants:
- every entity this module returns is CRLF-canonical (RFC 5322 §2.3, RFC 8551 §3.1.1);
- a ``MimeEntity`` is spans of one buffer: parsing copies header blocks, never a body.

Security notes: the parser never trusts lengths from the input; everything is found by
searching, bounded by the input. Malformed structures raise ``MalformedMessage`` with a
short text that names no content (the verifier turns it into an *invalid* result).
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import Message

from gateway.smime.types import MalformedMessage

CRLF = b"\r\n"
_BLANK_LINE = b"\r\n\r\n"
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


# --------------------------------------------------------------------------- entities


@dataclass(frozen=True)
class MimeEntity:
    """One MIME entity, as spans of a CRLF-canonical buffer (no copy of the body).

    ``header`` is the header block with the CRLF ending its last field, without the
    empty line; ``body_start``/``body_end`` delimit the body inside ``data``. ``fields``
    is never changed once the entity is built: its Content-Type and its parameters are
    cached on first use."""

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

    @functools.cached_property
    def content_type(self) -> str:
        """Lower-case ``type/subtype``; the default when absent or unparsable (RFC 2045 §5.2).
        Read once per entity (``fields`` never changes): a received message's entities
        are classified two or three times each."""
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


# --------------------------------------------------------------------------- header blocks


def raw_field_value(header: bytes, name: str) -> str | None:
    """The value of the first field ``name`` in a CRLF header block, exactly as it came
    (continuation lines kept, CRLFs removed, leading blanks stripped), decoded as ASCII
    with surrogateescape so that 8-bit octets (an RFC 6532 UTF-8 file name) survive a
    round trip through ``replace_header_field``; None if there is no such field. The
    parsed ``email`` value would replace those octets (U+FFFD)."""
    wanted = name.lower().encode("ascii")
    found: list[bytes] | None = None
    for line in header.split(CRLF):
        if found is not None:
            if line[:1] not in (b" ", b"\t"):
                break
            found.append(line)
            continue
        field_name, colon, value = line.partition(b":")
        if colon and field_name.strip().lower() == wanted:
            found = [value]
    if found is None:
        return None
    return b"".join(found).decode("ascii", "surrogateescape").lstrip(" \t")


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
    # ``value`` comes from a header decoded as ASCII with surrogateescape (8-bit octets,
    # e.g. an RFC 6532 UTF-8 file name, kept as they came): encoded back the same way
    new_line = f"{name}: {value}".encode("ascii", "surrogateescape") if value is not None else b""
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
