"""Reading one queue file: its record in two small reads, its content streamed and checked.

``EntryReader(path)`` opens the file once (``O_NOFOLLOW``: a symbolic link planted in
the spool is refused, never followed; ``O_NONBLOCK``: a FIFO cannot hang the reader),
checks that it is a regular file whose size is exactly what its preamble announces,
then reads and checks the record (``gateway.spool.record``). Everything after uses the
same descriptor, so a reader sees one consistent version even if the entry is moved
or replaced meanwhile (renames keep the inode; a replacement is a new inode).

A claim reads with ``read_claimed`` instead: the record and, for an entry of at most
``read_ahead`` bytes, the whole content at once, checked the same way; a file of at most
``WHOLE_READ_LIMIT`` bytes in a single ``pread`` (one system call instead of three).

``EntryReader`` reads the content in bounded chunks, never whole: memory stays at one
chunk however large the message. Its SHA-256 is computed on the way and compared at
the end of a sequential read; a mismatch raises ``CorruptEntry`` *before* the caller
sees the end of the content, so a stage that reads to the end never relays a damaged
message as if it were whole (the last chunk is withheld until the digest matches).

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
from gateway.spool.record import (
    DIGEST_SIZE,
    PREAMBLE_SIZE,
    Preamble,
    decode_preamble,
    decode_trailer,
)

CHUNK_SIZE = 256 * 1024
WHOLE_READ_LIMIT = 128 * 1024  # bytes: a claimed file this small is read in one go
_FRAME_SIZE = PREAMBLE_SIZE + DIGEST_SIZE  # a file's bytes that are neither content nor record
_DIGEST_MISMATCH = "content SHA-256 does not match the record"
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


def _regular(fd: int) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise CorruptEntry("not a regular file")
    return info


def _check_size(info: os.stat_result, preamble: Preamble) -> None:
    if info.st_size != preamble.file_size:
        raise CorruptEntry(
            f"file is {info.st_size} bytes, its preamble says {preamble.file_size} "
            "(truncated or appended to)"
        )


def read_record_fd(fd: int, info: os.stat_result | None = None) -> QueueRecord:
    """The checked record of the open queue file ``fd`` (``info``: its ``fstat``, if
    already made)."""
    info = _regular(fd) if info is None else info
    try:
        preamble = decode_preamble(os.pread(fd, PREAMBLE_SIZE, 0))
        _check_size(info, preamble)
        trailer = _pread_exactly(fd, preamble.record_length + DIGEST_SIZE, preamble.record_offset)
        return decode_trailer(preamble, trailer)
    except RecordError as error:
        raise CorruptEntry(str(error)) from None


def read_claimed(path: Path, read_ahead: int) -> tuple[QueueRecord, bytes | CorruptEntry | None]:
    """The checked record of the queue file ``path`` and, if its content is at most
    ``read_ahead`` bytes, that content checked against its SHA-256 (its damage, as a
    ``CorruptEntry`` value, if it does not match), else None: what a claim reads.

    A file of at most ``WHOLE_READ_LIMIT`` bytes whose content is wanted is read with
    one ``pread`` from its start, then cut into preamble, content and record, which
    are checked exactly as ``read_record_fd`` and ``EntryReader.read`` check them (the
    size first compared with the preamble's lengths); three reads were one system call
    each (session 9). A larger file is read as before: the preamble, the record, then
    the content."""
    fd = _open(path)
    try:
        info = _regular(fd)
        if info.st_size <= WHOLE_READ_LIMIT and info.st_size - _FRAME_SIZE <= read_ahead:
            return _read_at_once(fd, info)
        record = read_record_fd(fd, info)
        if record.content_length > read_ahead:
            return record, None
        try:
            content = _pread_exactly(fd, record.content_length, PREAMBLE_SIZE)
        except CorruptEntry as error:
            return record, error
        return record, _checked(content, record)
    finally:
        os.close(fd)


def _read_at_once(fd: int, info: os.stat_result) -> tuple[QueueRecord, bytes | CorruptEntry]:
    data = _pread_exactly(fd, info.st_size, 0)
    try:
        preamble = decode_preamble(data[:PREAMBLE_SIZE])
        _check_size(info, preamble)
        record = decode_trailer(preamble, data[preamble.record_offset :])
    except RecordError as error:
        raise CorruptEntry(str(error)) from None
    return record, _checked(data[PREAMBLE_SIZE : preamble.record_offset], record)


def _checked(content: bytes, record: QueueRecord) -> bytes | CorruptEntry:
    """``content`` if its SHA-256 is the record's, else the damage."""
    if hashlib.sha256(content).hexdigest() != record.content_sha256:
        return CorruptEntry(_DIGEST_MISMATCH)
    return content


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
            raise CorruptEntry(_DIGEST_MISMATCH)

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
