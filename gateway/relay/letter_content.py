"""A clear MIME message read into what the letter prints: Subject, body, attachments.

Role: part of the pure half of the postal fallback (issue 6, item 5). ``read_message``
turns the CLEAR message (before S/MIME) into a ``LetterContent``: the REAL Subject (the
letter travels in a sealed envelope, so the Subject that S/MIME would have protected is
printed, never logged and never put in the manifest or a file name), the body text
(``text/plain``, else ``text/html`` reduced to text by ``html_to_text``) and the other
parts as ``Attachment`` (file name, type, and the decoded bytes of a part that claims
to be a PDF). ``clean_label`` (one line, no control character, bounded) also cleans
the sender that the letter prints. Of the other postal modules this one imports only
``gateway.relay.postal_address`` (``one_line``) and ``gateway.relay.postal_errors``.

Bounds (hostile input): the MIME tree is at most 16 levels deep and 256 parts; the body
at most 500,000 characters (``LetterTooLong``), with at most ``MAX_ZERO_WIDTH_RUN``
combining marks or format characters (Unicode categories Mn, Me, Cf: accents, zero
width spaces and joiners, variation selectors, bidi controls) in a row, the rest of a
run dropped. fpdf2 measures the whole line again for each character it adds, so a
line costs the square of its characters, and zero-width characters never fill a line:
"e" and 20,000 U+0301 took 15 s of CPU, a 1 MB body of them hours. Three in a row
keep ordinary text (two accents on one letter in NFD Vietnamese, Hebrew points, emoji
joiners) as it is. A multipart message whose boundaries are broken or missing raises
``UnreadableMessage``, and so does any error of the parser on malformed MIME.

Character sets (decision of session 6, item H5-1): a doctor expects the letter to carry
the message, and to be told where the gateway had to guess; a failure DSN for a charset
label the sender's client got wrong, or silently replaced characters in medical text,
are both worse. ``decode_text`` reads each text part (RFC 2045 §5.2: no ``charset``
means US-ASCII; RFC 2046 §4.1.2):
- with its declared charset when Python knows it and every byte decodes (the labels of
  ISO-8859-1 are read as windows-1252, as the WHATWG Encoding Standard does: it only
  differs on 0x80-0x9F, C1 controls in Latin-1 that the letter would drop, and the
  € œ ’ “ ” … of the French mail that carries that label);
- with an unknown label (``unknown-8bit``, ``x-unknown``, ``utf8x``, a Python codec
  that is no charset: ``base64``, ``unicode_escape``, ``idna``...), or US-ASCII / no
  label over 8-bit bytes: as UTF-8 when the bytes
  are valid UTF-8, else as windows-1252 (not Latin-1, for the reason above), its five
  undefined bytes becoming U+FFFD;
- with a known label whose bytes do not decode: that charset, each bad sequence
  becoming U+FFFD.
Every part read in one of the last two ways adds a ``TextDecoding`` (the declared label,
cleaned and bounded; the charset used; how many U+FFFD it put in) to
``LetterContent.decodings``, and U+FFFD in the Subject (a header whose charset Python
lacks, or raw 8-bit bytes) are counted in ``LetterContent.subject_replaced``: the
letter prints a warning for each, and its manifest lists them. The text is never
altered without that mark.

Libraries: the stdlib ``email`` package parses MIME and ``codecs`` decodes. Written by
hand: the HTML to text reduction (stdlib ``html.parser``, a dozen lines; no dependency
needed) and the charset fallback above (a dozen lines; no library decides it the way a
letter needs: ``charset-normalizer`` guesses, it does not say it guessed).

Trust level: runs in the secure agent (sees clear text); no I/O; never logs the
Subject, the body or attachment names.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.policy
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from html.parser import HTMLParser
from typing import Any, Final

from gateway.relay.postal_address import SPACES, one_line
from gateway.relay.postal_errors import LetterTooLong, PostalError, UnreadableMessage

MAX_MIME_DEPTH: Final = 16
MAX_MIME_PARTS: Final = 256
MAX_BODY_CHARACTERS: Final = 500_000

MAX_ZERO_WIDTH_RUN: Final = 3
MAX_SUBJECT_CHARACTERS: Final = 500
MAX_NAME_CHARACTERS: Final = 120

# --- reading the MIME message -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str  # "" when the part has no file name
    content_type: str
    pdf: bytes | None  # the decoded bytes when it claims to be a PDF, else None


@dataclass(frozen=True, slots=True)
class TextDecoding:
    """Text parts that could not be read with the charset they declared (module
    docstring, "Character sets"): the letter and its manifest say so."""

    declared: str  # the label as declared (cleaned, lower case); "" when none
    read_as: str  # the charset used: "utf-8", "windows-1252" or the declared label
    replaced: int  # U+FFFD put in the text for bytes that could not be read


@dataclass(frozen=True, slots=True)
class LetterContent:
    subject: str
    body: str
    attachments: tuple[Attachment, ...]
    decodings: tuple[TextDecoding, ...] = ()  # one per (declared, read_as), in order
    subject_replaced: int = 0  # U+FFFD in the Subject as the parser decoded it


_FATAL_DEFECTS: Final = (
    email.errors.NoBoundaryInMultipartDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ZERO_WIDTH_CATEGORIES: Final = frozenset(("Mn", "Me", "Cf"))  # marks, format characters


def _clean_text(text: str) -> str:
    """Newlines normalised, tabs expanded, other control characters removed, runs of
    zero-width characters bounded."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    return _bounded_zero_width_runs(_CONTROL.sub("", text))


def _bounded_zero_width_runs(text: str) -> str:
    """At most ``MAX_ZERO_WIDTH_RUN`` combining marks or format characters in a row
    (module docstring: they cost the drawing without filling a line)."""
    if text.isascii():
        return text
    kept: list[str] = []
    run = 0
    for char in text:
        run = run + 1 if unicodedata.category(char) in _ZERO_WIDTH_CATEGORIES else 0
        if run <= MAX_ZERO_WIDTH_RUN:
            kept.append(char)
    return "".join(kept)


def clean_label(text: str, limit: int) -> str:
    return one_line(_CONTROL.sub(" ", text))[:limit]


class _HtmlText(HTMLParser):
    """Visible text of an HTML body: block elements become line breaks."""

    _BREAKS = frozenset("br p div li tr h1 h2 h3 h4 h5 h6 blockquote pre table ul ol hr".split())
    _HIDDEN = frozenset(("script", "style", "head", "title"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth += 1
        elif tag in self._BREAKS:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag in self._BREAKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.chunks.append(SPACES.sub(" ", data))


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    lines = (line.strip() for line in "".join(parser.chunks).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _leaves(part: MIMEPart, depth: int, in_alternative: bool) -> Iterator[tuple[Any, bool]]:
    """Every non-multipart part with whether its parent is multipart/alternative;
    message/rfc822 is a leaf (listed as an attachment, not opened)."""
    if depth > MAX_MIME_DEPTH:
        raise UnreadableMessage(f"MIME nesting deeper than {MAX_MIME_DEPTH} levels")
    if part.get_content_maintype() != "multipart":
        yield part, in_alternative
        return
    alternative = part.get_content_subtype() == "alternative"
    for child in part.iter_parts():
        yield from _leaves(child, depth + 1, alternative)


# --- decoding text parts (module docstring, "Character sets") ----------------------------

REPLACEMENT: Final = "\ufffd"
FALLBACK_CHARSET: Final = "windows-1252"
MAX_CHARSET_LABEL: Final = 40  # the longest name in the IANA charset registry
_READ_AS: Final = {"iso8859-1": "cp1252"}  # WHATWG: the Latin-1 labels mean windows-1252
# Python text codecs that are no MIME charset: they rewrite the text (escapes, IDNA)
_NOT_CHARSETS: Final = frozenset(
    ("unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined")
)


def _codec_for(label: str) -> str | None:
    """The Python codec that reads ``label`` ("ascii" for no label); None when Python
    has no codec of that name, or one that is no charset (``_NOT_CHARSETS``)."""
    try:
        name = codecs.lookup(label or "us-ascii").name
    except (LookupError, ValueError):
        return None
    return None if name in _NOT_CHARSETS else _READ_AS.get(name, name)


def _read_without_charset(payload: bytes, label: str) -> tuple[str, TextDecoding]:
    """UTF-8 when the bytes are valid UTF-8, else windows-1252 (undefined bytes: U+FFFD)."""
    try:
        return payload.decode("utf-8"), TextDecoding(label, "utf-8", 0)
    except UnicodeDecodeError:
        text = payload.decode("cp1252", errors="replace")
        return text, TextDecoding(label, FALLBACK_CHARSET, text.count(REPLACEMENT))


def decode_text(payload: bytes, declared: str | None) -> tuple[str, TextDecoding | None]:
    """The text of a part's decoded bytes, and how it was read when not as declared."""
    label = clean_label(declared or "", MAX_CHARSET_LABEL).lower()
    codec = _codec_for(label)
    if codec is None:
        return _read_without_charset(payload, label)
    try:
        return payload.decode(codec), None
    except LookupError:  # not a text codec (base64, zlib...)
        return _read_without_charset(payload, label)
    except UnicodeError:
        if codec == "ascii":  # no label or US-ASCII over 8-bit bytes: a missing label
            return _read_without_charset(payload, label)
    try:
        text = payload.decode(codec, errors="replace")
    except (LookupError, UnicodeError):  # a codec without "replace"
        return _read_without_charset(payload, label)
    substituted = codecs.lookup(label or "us-ascii").name in _READ_AS
    read_as = FALLBACK_CHARSET if substituted else label
    return text, TextDecoding(label, read_as, text.count(REPLACEMENT))


def _text_of(part: MIMEPart) -> tuple[str, TextDecoding | None]:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return "", None
    text, decoding = decode_text(payload, part.get_content_charset())
    if part.get_content_subtype() == "html":
        return html_to_text(text), decoding
    return text, decoding


def _merged(decodings: list[TextDecoding]) -> tuple[TextDecoding, ...]:
    """One ``TextDecoding`` per (declared, read_as), their ``replaced`` summed."""
    totals: dict[tuple[str, str], int] = {}
    for decoding in decodings:
        key = (decoding.declared, decoding.read_as)
        totals[key] = totals.get(key, 0) + decoding.replaced
    return tuple(TextDecoding(d, r, n) for (d, r), n in totals.items())


def _attachment(part: MIMEPart) -> Attachment:
    name = clean_label(part.get_filename() or "", MAX_NAME_CHARACTERS)
    content_type = part.get_content_type()
    claims_pdf = content_type == "application/pdf" or (
        content_type == "application/octet-stream" and name.lower().endswith(".pdf")
    )
    payload = part.get_payload(decode=True) if claims_pdf else None
    return Attachment(
        name=name,
        content_type=content_type,
        pdf=payload if isinstance(payload, bytes) else None,
    )


def _parse(message: bytes) -> EmailMessage:
    if not message.strip():
        raise UnreadableMessage("the message is empty")
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)  # what policy.default makes
    return parsed


def read_message(message: bytes) -> LetterContent:
    """Subject, body text and attachments of a clear MIME message."""
    try:
        return _read_message(_parse(message))
    except PostalError:
        raise
    except (LookupError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise UnreadableMessage(f"malformed MIME message ({type(error).__name__})") from error


def _read_message(parsed: EmailMessage) -> LetterContent:
    body_part = parsed.get_body(preferencelist=("plain", "html"))
    read = [_text_of(body_part)] if body_part is not None else []
    attachments: list[Attachment] = []
    for count, (leaf, in_alternative) in enumerate(_leaves(parsed, 0, False), start=1):
        if count > MAX_MIME_PARTS:
            raise UnreadableMessage(f"more than {MAX_MIME_PARTS} MIME parts")
        if any(isinstance(defect, _FATAL_DEFECTS) for defect in leaf.defects):
            raise UnreadableMessage("malformed MIME message (broken multipart boundaries)")
        if leaf is body_part:
            continue
        is_inline_text = (
            leaf.get_content_maintype() == "text"
            and leaf.get_filename() is None
            and leaf.get_content_disposition() != "attachment"
        )
        if is_inline_text:
            if not in_alternative:  # an alternative of the body says the same thing
                read.append(_text_of(leaf))
            continue
        attachments.append(_attachment(leaf))
    if any(isinstance(defect, _FATAL_DEFECTS) for defect in parsed.defects):
        raise UnreadableMessage("malformed MIME message (broken multipart boundaries)")
    body = _clean_text("\n\n".join(text.strip("\n") for text, _ in read if text.strip()))
    if len(body) > MAX_BODY_CHARACTERS:
        raise LetterTooLong(f"the body is longer than {MAX_BODY_CHARACTERS} characters")
    subject = clean_label(str(parsed.get("subject", "")), MAX_SUBJECT_CHARACTERS)
    return LetterContent(
        subject=subject,
        body=body,
        attachments=tuple(attachments),
        decodings=_merged([decoding for _, decoding in read if decoding is not None]),
        subject_replaced=subject.count(REPLACEMENT),
    )
