"""Receiving DATA line by line: end detection, un-dot-stuffing, limits, smuggling (sans-IO).

Role: the session reads lines ending in CRLF (or fragments of an over-long line) and feeds
them here; this object says when the message ended, hands out the dot-unstuffed content in
chunks for the spool, keeps the header section for the after-DATA policy, and records the
first problem found. Once a problem is found nothing more is kept, but the session must
still read up to the final dot before replying (RFC 5321 §4.2.5: the reply comes after the
end of data).

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
