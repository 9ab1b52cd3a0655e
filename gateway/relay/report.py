"""Shared pieces of the gateway's reports (RFC 6522 ``multipart/report``): sans-IO.

Role: the MIME and header-field helpers that ``gateway.relay.dsn`` (RFC 3464) and
``gateway.relay.mdn`` (RFC 8098) both use: reading fields of an original's header
block, writing header fields (RFC 2047 encoded-words for non-ASCII text, folding at 78
characters, RFC 5322 §2.1.1 and §2.2.3), the human-readable ``text/plain`` part, the
multipart body (RFC 2046 §5.1.1), fresh Message-IDs and boundaries.

Invariants: everything written is CRLF-terminated, 7-bit, and no line this module
writes is longer than 78 characters unless a single word is (a Message-ID, at most
998); a value with CR, LF, NUL or another control character is refused with
``NotificationRefused`` (header injection), never written.

Security notes: text that comes from outside (a remote SMTP reply) goes through
``printable_ascii`` before it is written anywhere; header blocks are read by searching
the bytes, bounded by the input, and lines that are not header fields are dropped.

Why by hand: the layout of a report is small and fixed and every byte must be decided
here; the stdlib does the encodings (``email.header`` for RFC 2047,
``email.quoprimime`` for quoted-printable, ``email.utils`` for dates and addresses).

Trust level: pure data; no I/O.
"""

from __future__ import annotations

import email.header
import email.quoprimime
import email.utils
import re
import secrets
import textwrap
from collections.abc import Iterable
from datetime import UTC, datetime

CRLF = b"\r\n"
MAX_LINE = 78  # RFC 5322 §2.1.1 SHOULD

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_NOT_PRINTABLE_ASCII_RE = re.compile(r"[^\x20-\x7e]")
_HEADER_NAME_RE = re.compile(rb"[!-9;-~]+")


class NotificationRefused(ValueError):
    """A DSN or MDN must not be built (null sender, bad value); the text says why."""


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def split_fields(data: bytes) -> list[tuple[str, bytes]]:
    """(name, raw field with its folded lines and CRLF) for each field of the header
    block at the start of ``data``. The block ends at the first empty line, or at the
    first line that is neither a field nor a continuation: where a sender forgot the
    empty line, a reader starts the body there, so no later line (a body line shaped
    like ``Date: ...``, say) is ever taken for a field and copied into a report."""
    lines = _LINE_ENDS.split(data)  # a bare CR ends a line for a reader too
    fields: list[tuple[str, list[bytes]]] = []
    for line in lines:
        if not line.strip(b" \t"):
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1].append(line)
            continue
        raw_name, colon, _ = line.partition(b":")
        raw_name = raw_name.rstrip(b" \t")
        if not (colon and _HEADER_NAME_RE.fullmatch(raw_name)):
            break  # the body starts here for a reader (docstring)
        fields.append((raw_name.decode("ascii"), [line]))
    # each field's lines joined once: linear, however many folded lines a sender wrote
    return [(name, CRLF.join(parts) + CRLF) for name, parts in fields]


def header_value(original_headers: bytes, name: str) -> str | None:
    """The unfolded value of the first field ``name`` in the header block, or None."""
    for field_name, raw in split_fields(original_headers):
        if field_name.lower() == name.lower():
            value = raw.split(b":", 1)[1].decode("utf-8", "replace")
            return re.sub(r"\r?\n[ \t]+", " ", value).strip()
    return None


def human_part(text: str) -> bytes:
    """A ``text/plain`` part: 7bit when ASCII, else UTF-8 quoted-printable; the text is
    wrapped at 76 columns first (indentation kept), so no line exceeds 78 either way."""
    text = wrap_text(text)
    if text.isascii():
        header = header_field("Content-Type", 'text/plain; charset="us-ascii"')
        header += header_field("Content-Transfer-Encoding", "7bit")
        return header + CRLF + crlf(text.encode("ascii"))
    # quoprimime encodes characters < 256 as one =XX each: give it the UTF-8 octets.
    octets = text.encode("utf-8").decode("latin-1")
    body = email.quoprimime.body_encode(octets, eol="\r\n")
    header = header_field("Content-Type", 'text/plain; charset="utf-8"')
    header += header_field("Content-Transfer-Encoding", "quoted-printable")
    return header + CRLF + crlf(body.encode("ascii"))


def wrap_text(text: str, width: int = 76) -> str:
    """Each line of ``text`` wrapped at ``width``; continuation lines of an indented
    line keep its indentation plus two spaces. A word longer than the width is cut (an
    untrusted remote reply must not make a line too long)."""
    out: list[str] = []
    for line in text.splitlines():
        indent = line[: len(line) - len(line.lstrip(" "))]
        wrapped = textwrap.wrap(
            line,
            width=width,
            subsequent_indent=indent + "  " if indent else "",
            break_on_hyphens=False,
        )
        out += wrapped or [""]
    return "\r\n".join(out) + "\r\n"


def multipart_body(boundary: str, parts: Iterable[bytes]) -> bytes:
    """Parts joined with ``boundary`` and closed (RFC 2046 §5.1.1), CRLF everywhere.

    Each part keeps its final CRLF; the CRLF before a delimiter belongs to the delimiter,
    so it is added on top."""
    delimiter = b"--" + boundary.encode("ascii")
    chunks: list[bytes] = []
    for part in parts:
        chunks += [delimiter, CRLF, part if part.endswith(CRLF) else part + CRLF, CRLF]
    chunks += [delimiter, b"--", CRLF]
    return b"".join(chunks)


def header_field(name: str, value: str) -> bytes:
    """``Name: value`` CRLF, folded at spaces to <= 78 characters; a value with non-ASCII
    text becomes RFC 2047 encoded-words (UTF-8). Raises ``NotificationRefused`` on CR, LF
    or another control character."""
    check_text(name, value)
    if not value.isascii():
        folded = email.header.Header(value, "utf-8", MAX_LINE, header_name=name).encode(
            linesep="\r\n"
        )
        return f"{name}: {folded}".encode("ascii") + CRLF
    return fold(f"{name}: {value}").encode("ascii") + CRLF


def format_address(display_name: str, address: str) -> str:
    """``Display Name <addr>`` with the name quoted or RFC 2047-encoded as needed."""
    return email.utils.formataddr((display_name, address), charset="utf-8")


def fold(line: str) -> str:
    """Fold an ASCII header line at spaces so each line is <= 78 characters where a
    space allows it (RFC 5322 §2.2.3); a longer word stays whole (limit 998)."""
    if len(line) <= MAX_LINE:
        return line
    out: list[str] = []
    current = ""
    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if len(candidate) > MAX_LINE and current.strip():
            out.append(current)
            current = " " + word
        else:
            current = candidate
    out.append(current)
    return "\r\n".join(out)


def printable_ascii(text: str, limit: int = 900) -> str:
    """``text`` with line breaks as spaces and anything not printable ASCII as ``?``,
    runs of spaces collapsed, cut to ``limit`` characters (a remote reply is untrusted)."""
    flat = re.sub(r"[\r\n\t]+", " ", text)
    cleaned = re.sub(r" {2,}", " ", _NOT_PRINTABLE_ASCII_RE.sub("?", flat)).strip()
    return cleaned[:limit]


def make_message_id(hostname: str) -> str:
    """A fresh ``<random@hostname>`` (RFC 5322 §3.6.4), 128 random bits."""
    return f"<{secrets.token_hex(16)}@{hostname}>"


def new_boundary() -> str:
    # 128 random bits cannot occur in the parts by chance; "=_" cannot occur in QP
    # output or base64 (RFC 2045 §6.7), the parts this module writes.
    return f"=_missive_{secrets.token_hex(16)}"


def is_message_id(value: str) -> bool:
    return bool(re.fullmatch(r"<[!-=?-~]+@[!-=?-~]+>", value)) and len(value) <= 250


def format_date(value: datetime) -> str:
    return email.utils.format_datetime(value.astimezone(UTC))


def crlf(data: bytes) -> bytes:
    canonical = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", CRLF)
    return canonical if canonical.endswith(CRLF) or not canonical else canonical + CRLF


def is_7bit(data: bytes) -> bool:
    return (
        data.isascii()
        and b"\x00" not in data
        and all(len(line) <= 998 for line in data.split(CRLF))
    )


def check_text(what: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise NotificationRefused(f"{what}: empty")
    if _CONTROL_RE.search(value):
        raise NotificationRefused(f"{what}: control character (CR, LF, NUL, ...) not allowed")
    if len(value) > 998:
        raise NotificationRefused(f"{what}: longer than 998 characters")


def check_address(what: str, address: str) -> None:
    check_text(what, address)
    if any(char in address for char in ' <>"') or "@" not in address:
        raise NotificationRefused(f"{what}: not a mailbox address: {address!r}")
