"""Receiving DATA by lines or blocks: end detection, un-dot-stuffing, limits, smuggling (sans-IO).

Role: the session feeds the data as it reads it, either line by line (``feed_line``,
``feed_fragment`` for a piece of an over-long line) or in blocks (``feed_block``: what
``StreamReader.readuntil(b".\r\n")`` returns, ``gateway.smtp.session.read_block``);
this object says when the message ended, hands out the dot-unstuffed content in chunks
for the spool, keeps the header section for the after-DATA policy, and records the first
problem found. Once a problem is found nothing more is kept, but the session must still
read up to the final dot before replying (RFC 5321 §4.2.5: the reply comes after the
end of data).

Blocks (the fast path of the SMTP front, issue 5): a block never goes past the first
``.<CRLF>`` of the stream, so the final dot can only be at its end and the bytes a client
pipelined after it stay in the reader for the next command. The complete lines of a
block are judged together with ``bytes`` methods (CR, LF and CRLF counts, line lengths,
``replace`` for the transparency dots) when they are body lines with no problem;
anything else (header lines, a line with a problem, the size limit reached) goes
through the same per-line code as ``feed_line``, so both ways give the same outcome,
content and headers (a test drives both through a real ``StreamReader``). A partial
line is kept for the next block; one longer than ``MAX_LINE`` is dropped at once.

Rules (each decides a reply):

- The message ends only on a line that is exactly ``.<CRLF>`` (RFC 5321 §4.1.1.4).
- A bare CR or bare LF anywhere in the data (RFC 5321 §2.3.8: "CR and LF MUST only occur
  together as CRLF") refuses the whole message with 554 5.6.0: this is the SMTP smuggling
  defence (like Postfix ``smtpd_forbid_bare_newline``); ``<LF>.<LF>``, ``<LF>.<CRLF>`` and
  ``<CR>.<CRLF>`` never end the message and never start a second one.
- A line longer than 1000 octets with its CRLF (RFC 5321 §4.5.3.1.6; one more for the
  transparency dot) refuses the message with 500 5.5.2.
- More than ``max_size`` octets of content: 552 5.3.4 (RFC 1870 §6).
- Transparency (RFC 5321 §4.5.2): a leading dot is removed.

Trust level: pure; sees content, logs nothing.
"""

from __future__ import annotations

from gateway.smtp import replies as r
from gateway.smtp.replies import Reply

MAX_LINE = 1001  # 998 octets + CRLF (RFC 5321 §4.5.3.1.6) + the transparency dot
END_OF_DATA = b".\r\n"
_CRLF = b"\r\n"
_FINAL_LINE = b"\r\n.\r\n"  # the final dot with the end of the line before it
HEADER_LIMIT = 256 * 1024  # larger header sections are refused (552 5.3.4)
CHUNK_SIZE = 64 * 1024


class DataReceiver:
    """Feed it lines; read ``problem``, ``take_chunk()``, ``headers`` and ``size``."""

    def __init__(self, max_size: int, *, chunk_size: int = CHUNK_SIZE) -> None:
        self.max_size = max_size
        self.size = 0
        self.problem: Reply | None = None
        self.ended = False
        self._chunk_size = chunk_size
        self._pending = bytearray()
        self._headers = bytearray()
        self._in_headers = True
        self._in_fragment = False
        self._partial = b""  # feed_block: the start of a line not ended yet
        self._at_line_start = True  # feed_block: _partial starts a line (not a tail)

    @property
    def headers(self) -> bytes:
        """The whole header section (at most ``HEADER_LIMIT``), without the empty line."""
        return bytes(self._headers)

    def feed_line(self, line: bytes) -> bool:
        """One line ending in CRLF; True when it was the final dot."""
        if self._in_fragment:
            self._in_fragment = False
            self._fail(r.LINE_TOO_LONG)
            return False
        if line == END_OF_DATA:
            self.ended = True
            return True
        if self.problem is not None:
            return False
        if len(line) > MAX_LINE:
            self._fail(r.LINE_TOO_LONG)
        elif line.count(b"\r") != 1 or line.count(b"\n") != 1:
            self._fail(r.BARE_NEWLINE)
        else:
            self._keep(line[1:] if line[:1] == b"." else line)
        return False

    def feed_fragment(self, data: bytes) -> None:
        """Part of a line too long for the reader: the message is refused."""
        self._in_fragment = True
        self._fail(r.LINE_TOO_LONG)

    def feed_block(self, block: bytes) -> bool:
        """Bytes as read from the stream, never past its first ``.<CRLF>`` since the last
        block (``gateway.smtp.session.read_block``); True when it ended with the final dot."""
        text = self._partial + block if self._partial else block
        final = text.find(_FINAL_LINE)
        if self._at_line_start and text.startswith(END_OF_DATA):
            final = -2  # the final dot is the first line
        if final != -1 and final != len(text) - len(_FINAL_LINE):
            raise ValueError("block read past the final dot")  # read_block never does
        if final != -1:
            self._partial = b""
            self._feed_complete(text[: final + len(_CRLF)])
            self.ended = True
            return True
        end = text.rfind(_CRLF) + len(_CRLF)  # 1 when there is no CRLF: no whole line
        if end == 1:
            end = 0
        self._feed_complete(text[:end])
        self._at_line_start = self._at_line_start or end > 0
        self._partial = text[end:]
        if len(self._partial) > MAX_LINE:
            # a CR at its end may be the first half of the line's CRLF (the reader cut
            # there): kept, so that a final dot right after it is still seen
            keep = b"\r" if self._partial.endswith(b"\r") else b""
            self.feed_fragment(self._partial[: len(self._partial) - len(keep)])
            self._partial, self._at_line_start = keep, False
        return False

    def _feed_complete(self, lines: bytes) -> None:
        """Whole lines (``lines`` ends in CRLF), the final dot not among them."""
        if not lines:
            return
        if self.problem is not None:
            self._in_fragment = False  # what feed_line would do: nothing kept
            return
        if self._in_headers:
            end_of_headers = _end_of_headers(lines)
            self._feed_each(lines[:end_of_headers])
            lines = lines[end_of_headers:]
            if not lines or self.problem is not None:
                return
        content = _clean_body(lines) if not self._in_fragment else None
        if content is None or self.size + len(content) > self.max_size:
            self._feed_each(lines)  # the per-line path finds and names the problem
            return
        self.size += len(content)
        self._pending += content

    def _feed_each(self, lines: bytes) -> None:
        """The per-line path, on lines cut exactly where ``readuntil(b"\r\n")`` would."""
        for line in lines.split(_CRLF)[:-1]:
            self.feed_line(line + _CRLF)

    def take_chunk(self, *, final: bool = False) -> bytes:
        """Content ready for the spool (at least ``chunk_size`` unless ``final``)."""
        if self.problem is not None or (not final and len(self._pending) < self._chunk_size):
            return b""
        chunk = bytes(self._pending)
        self._pending.clear()
        return chunk

    def fail(self, reply: Reply) -> None:
        """Refuse the message for a reason found outside (spool error, size)."""
        self._fail(reply)

    def _keep(self, line: bytes) -> None:
        self.size += len(line)
        if self.size > self.max_size:
            self._fail(r.MESSAGE_TOO_BIG)
            return
        self._pending += line
        if self._in_headers:
            if line == b"\r\n":
                self._in_headers = False
            elif len(self._headers) + len(line) <= HEADER_LIMIT:
                self._headers += line
            else:
                # refused, never truncated: the policy must judge the very header section
                # that is stored (a From: past the limit would escape the checks)
                self._fail(r.HEADER_TOO_BIG)

    def _fail(self, reply: Reply) -> None:
        if self.problem is None:
            self.problem = reply
        self._pending.clear()


def _end_of_headers(lines: bytes) -> int:
    """Offset just past the empty line that ends the header section (or the end)."""
    if lines.startswith(_CRLF):
        return len(_CRLF)
    empty = lines.find(b"\r\n\r\n")
    return len(lines) if empty == -1 else empty + 2 * len(_CRLF)


def _clean_body(lines: bytes) -> bytes | None:
    """Body lines without a problem, dot-unstuffed; None if any line has one (bare CR or
    LF, RFC 5321 §2.3.8; longer than ``MAX_LINE``), for the per-line path to name it."""
    crlf = lines.count(_CRLF)
    if lines.count(b"\r") != crlf or lines.count(b"\n") != crlf:
        return None
    if len(lines) > MAX_LINE and max(map(len, lines.split(b"\n"))) >= MAX_LINE:
        return None  # a piece of MAX_LINE octets + LF is a line longer than MAX_LINE
    if lines.startswith(b".") or b"\r\n." in lines:
        return (_CRLF + lines).replace(b"\r\n.", _CRLF)[len(_CRLF) :]
    return lines
