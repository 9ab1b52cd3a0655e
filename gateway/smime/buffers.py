"""Output buffers for large messages: filled piece by piece, handed over as ``bytes``
without a final copy, and a base64 writer that streams into them.

Role: keep the peak memory of encrypting and decrypting a 50 MB message near one copy of
the output (the issue asks for < 4x the message size for the whole sign + encrypt and
decrypt + verify). Encryption streams: content chunk -> ciphertext chunk -> (base64) ->
buffer, so neither the whole ciphertext nor the whole DER is ever held beside the output.

How: ``io.BytesIO`` is used as a bytes builder. It is sized once (``presized``), written in
place, and ``getvalue()`` then returns its internal ``bytes`` object: CPython shrinks it
to the written length and hands it over instead of copying (an implementation detail of
CPython's ``_io`` since 3.5; elsewhere it is one copy, never a wrong result).

Invariant: ``Base64Lines`` writes exactly what ``transfer.base64_lines`` would write for the
concatenation of everything given to it (76-character lines, each ending in CRLF): it
encodes whole 57-octet groups and carries the remainder to the next write.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

from gateway.smime.transfer import base64_lines

CHUNK = 1 << 20  # cipher and copy granularity: large enough to amortise calls
_GROUP = 57  # input octets of one 76-character base64 line (RFC 2045 §6.8)
_BASE64_BLOCK = _GROUP * 16384  # ~0.9 MB of input per base64 call


def presized(total: int) -> io.BytesIO:
    """A buffer whose storage already holds ``total`` octets, positioned at 0: write it
    from the start, then ``finish``."""
    buffer = io.BytesIO()
    if total > 1:
        buffer.seek(total - 1)
        buffer.write(b"\0")
        buffer.seek(0)
    return buffer


def finish(buffer: io.BytesIO, length: int | None = None) -> bytes:
    """The first ``length`` octets (default: up to the current position) as ``bytes``,
    without a copy on CPython (see the module docstring)."""
    buffer.truncate(buffer.tell() if length is None else length)
    return buffer.getvalue()


def slices(chunks: Iterable[bytes | memoryview], size: int = CHUNK) -> Iterator[memoryview]:
    """The chunks cut into views of at most ``size`` octets (no copy)."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), size):
            yield view[start : start + size]


def base64_lines_length(size: int) -> int:
    """Length of ``transfer.base64_lines`` output for ``size`` input octets."""
    if size == 0:
        return 0
    characters = 4 * ((size + 2) // 3)
    lines = (characters + 75) // 76
    return characters + 2 * lines


class Base64Lines:
    """Streams base64 in CRLF-terminated 76-character lines into ``out``."""

    def __init__(self, out: io.BytesIO) -> None:
        self._out = out
        self._carry = b""

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._carry:
            need = _GROUP - len(self._carry)
            self._carry += bytes(view[:need])
            view = view[need:]
            if len(self._carry) < _GROUP:
                return
            self._out.write(base64_lines(self._carry))
            self._carry = b""
        whole = len(view) - len(view) % _GROUP
        for start in range(0, whole, _BASE64_BLOCK):
            self._out.write(base64_lines(view[start : min(start + _BASE64_BLOCK, whole)]))
        self._carry = bytes(view[whole:])

    def close(self) -> None:
        """Write the last, partial line (if any)."""
        if self._carry:
            self._out.write(base64_lines(self._carry))
            self._carry = b""
