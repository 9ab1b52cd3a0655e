"""Reading one queue file: its record in two small reads, its content streamed and checked.

``EntryReader(path)`` opens the file once (``O_NOFOLLOW``: a symbolic link planted in
the spool is refused, never followed; ``O_NONBLOCK``: a FIFO cannot hang the reader),
checks that it is a regular file whose size is exactly what its preamble announces,
then reads and checks the record (``gateway.spool.record``). Everything after uses the
same descriptor, so a reader sees one consistent version even if the entry is moved
or replaced meanwhile (renames keep the inode; a replacement is a new inode).

The content is read in bounded chunks, never whole: memory stays at one chunk however
large the message. Its SHA-256 is computed on the way and compared at the end of a
sequential read; a mismatch raises ``CorruptEntry`` *before* the caller sees the end
of the content, so a stage that reads to the end never relays a damaged message as if
it were whole (the last chunk is withheld until the digest matches).

Errors: ``CorruptEntry`` for anything that does not validate; ``FileNotFoundError``
passes through (the entry moved: the caller looks again). Trust level: reads under
the spool directory only; the content is never logged.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from gateway.spool.errors import CorruptEntry
from gateway.spool.model import QueueRecord, RecordError
from gateway.spool.record import DIGEST_SIZE, PREAMBLE_SIZE, decode_preamble, decode_trailer

CHUNK_SIZE = 256 * 1024
HEADER_LIMIT = 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _pread_exactly(fd: int, length: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise CorruptEntry("truncated while reading")
        parts.append(chunk)
        length, offset = length - len(chunk), offset + len(chunk)
    return b"".join(parts)


def _open(path: Path) -> int:
    try:
        return os.open(path, _OPEN_FLAGS)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CorruptEntry(f"cannot open: {error.strerror or error}") from None


def read_record_fd(fd: int) -> QueueRecord:
    """The checked record of the open queue file ``fd``."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise CorruptEntry("not a regular file")
    try:
        preamble = decode_preamble(os.pread(fd, PREAMBLE_SIZE, 0))
        if info.st_size != preamble.file_size:
            raise CorruptEntry(
                f"file is {info.st_size} bytes, its preamble says {preamble.file_size} "
                "(truncated or appended to)"
            )
        trailer = _pread_exactly(fd, preamble.record_length + DIGEST_SIZE, preamble.record_offset)
        return decode_trailer(preamble, trailer)
    except RecordError as error:
        raise CorruptEntry(str(error)) from None


def read_record(path: Path) -> QueueRecord:
    """Open ``path``, return its checked record (``CorruptEntry`` if it does not validate)."""
    fd = _open(path)
    try:
        return read_record_fd(fd)
    finally:
        os.close(fd)


class EntryReader:
    """One open queue file: ``record``, then ``read``/``chunks`` of its content."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = _open(path)
        try:
            self.record = read_record_fd(self._fd)
        except BaseException:
            self.close()
            raise
        self._position = 0
        self._digest = hashlib.sha256()
        self._held: bytes = b""

    @property
    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError("entry reader is closed")
        return self._fd

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """The next at most ``size`` bytes of content; ``b""`` at the end.

        The end is reported only after the SHA-256 matched; ``CorruptEntry`` otherwise.
        """
        if size <= 0:
            raise ValueError("read size must be positive")
        remaining = self.record.content_length - self._position
        if remaining <= 0:
            return self._release_end()
        chunk = os.pread(self._open_fd, min(size, remaining), PREAMBLE_SIZE + self._position)
        if not chunk:
            raise CorruptEntry("content truncated")
        self._position += len(chunk)
        self._digest.update(chunk)
        if self._position < self.record.content_length:
            return chunk
        self._check_digest()
        return chunk

    def _check_digest(self) -> None:
        if self._digest.hexdigest() != self.record.content_sha256:
            raise CorruptEntry("content SHA-256 does not match the record")

    def _release_end(self) -> bytes:
        if self.record.content_length == 0:
            self._check_digest()
        return b""

    def chunks(self, size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The content in chunks of at most ``size`` bytes, checked at the end."""
        while chunk := self.read(size):
            yield chunk

    def headers(self, limit: int = HEADER_LIMIT) -> tuple[bytes, bool]:
        """The header section (through the blank line) and whether it ended within
        ``limit`` bytes. Independent of ``read``'s position; the digest is not checked
        (only a full read can check it)."""
        length = min(limit, self.record.content_length)
        data = b""
        while len(data) < length:
            chunk = os.pread(
                self._open_fd, min(64 * 1024, length - len(data)), PREAMBLE_SIZE + len(data)
            )
            if not chunk:
                raise CorruptEntry("content truncated")
            start = max(0, len(data) - 3)
            data += chunk
            end = _header_end(data, start)
            if end is not None:
                return data[:end], True
        return data, len(data) == self.record.content_length

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> EntryReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _header_end(data: bytes, start: int) -> int | None:
    """Offset just past the blank line that ends the header section (RFC 5322 §2.1)."""
    if data.startswith((b"\r\n", b"\n")):
        return 2 if data.startswith(b"\r\n") else 1
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start)
    ends = [index + 4 for index in (crlf,) if index >= 0] + [
        index + 2 for index in (lf,) if index >= 0
    ]
    return min(ends) if ends else None
