"""The content of a message as SMTP DATA: line ends, dot-stuffing, final dot (sans-IO).

Role: ``DotStuffer`` encodes a stream of content chunks (``ContentSource``, read from the
spool) into what goes after a 354; ``has_bare_line_end`` is its fast test. Used by the
relay session (``smtp_session``) and the inbound store client
(``gateway.inbound.store_client``). No I/O.

Invariants (RFC 5321):
- every line end that leaves is CRLF: a bare CR or LF becomes CRLF (§2.3.8), so nothing
  read from a queued message can end the DATA early or smuggle a second message
  through us ("SMTP smuggling");
- a line that starts with ``.`` gets one more (§4.5.2), across chunk boundaries: a CR at
  the end of a chunk is held back until the next chunk shows whether an LF follows, so
  a CRLF is never split and a line start is always known;
- the output ends with ``CRLF.CRLF`` (a CRLF is added when the content does not end
  with one).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

#: The content of one message, a fresh iterator per call (one call per attempt).
ContentSource = Callable[[], AsyncIterator[bytes]]


class DotStuffer:
    """Streams content as DATA: CRLF line ends, dot-stuffing, final ``.CRLF`` (§4.5.2).

    A CR at the end of a chunk is held back until the next chunk shows whether an LF
    follows, so a CRLF is never split and a line start is always known. Whole buffers
    are handled with ``bytes`` methods (C loops): the line-end rewrite only runs when
    the chunk has a bare CR or LF, which what the gateway queues never has.
    """

    _LINE_END = re.compile(rb"\r\n|\r|\n")

    def __init__(self) -> None:
        self._held_cr = False
        self._at_line_start = True

    def feed(self, chunk: bytes) -> bytes:
        data = b"\r" + chunk if self._held_cr else chunk
        self._held_cr = data.endswith(b"\r")
        if self._held_cr:
            data = data[:-1]
        if has_bare_line_end(data):
            data = self._LINE_END.sub(b"\r\n", data)
        return self._stuff(data)

    def finish(self) -> bytes:
        tail = self._stuff(b"\r\n") if self._held_cr else b""
        self._held_cr = False
        if not self._at_line_start:
            tail += b"\r\n"
        return tail + b".\r\n"

    def _stuff(self, data: bytes) -> bytes:
        if not data:
            return data
        stuffed = data.replace(b"\r\n.", b"\r\n..")
        if self._at_line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._at_line_start = stuffed.endswith(b"\r\n")
        return stuffed


def has_bare_line_end(data: bytes) -> bool:
    """True when ``data`` has a CR not followed by LF or an LF not preceded by CR."""
    pairs = data.count(b"\r\n")
    return data.count(b"\r") != pairs or data.count(b"\n") != pairs
