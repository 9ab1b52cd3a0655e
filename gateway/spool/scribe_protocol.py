"""The frames between an SMTP front and its spool scribe (``gateway.spool.scribe``).

Role: the sans-IO part of the link over which a front process hands the messages it
receives to the child process that writes them durably into ``received/``. One
``socketpair`` per front, private to the two processes; nobody else can connect.

A frame is ``kind`` (1 byte), ``handle`` (4 bytes, the front's number for one entry
being written), ``length`` (4 bytes, big-endian) and ``length`` bytes of payload:

front -> scribe
    ``OPEN``   the entry's provisional record: the queue record as ``gateway.spool.record``
               encodes it, with empty content (so the envelope, origin, queue id and
               reception time travel with the codec and checks the spool itself uses);
    ``DATA``   content bytes, in order;
    ``COMMIT`` make the entry durable and visible (no payload);
    ``ABORT``  drop it; the payload is the reason (UTF-8) for ``spool.refused``.

scribe -> front
    ``READY``  once, when the scribe has opened the spool and the audit trail;
    ``DONE``   the ``COMMIT`` or ``ABORT`` of ``handle`` has ended well (payload: the
               queue id, ASCII, empty for an abort);
    ``FAILED`` it has not (payload: JSON ``{"error": <class>, "message": ..., "limit": N}``).

Invariants: every ``COMMIT`` and ``ABORT`` gets exactly one ``DONE`` or ``FAILED``, and
``DONE`` for a ``COMMIT`` is sent only once the scribe has ended the entry's steps (the
file fsynced, ``spool.added`` committed to the audit trail, the file linked into
``incoming/`` and ``incoming/`` fsynced: ``gateway.spool.scribe``): the front's ``250``
waits for it. An ``ABORT``'s reason has no bound here; the scribe keeps its first
1,000 characters (``scribe.MAX_REASON``). A frame is written with one ``write`` call, so frames of
concurrent entries never interleave. A payload longer than ``MAX_PAYLOAD`` or an unknown
kind is a protocol error: the reader closes the link, which fails every entry in flight
(the front answers ``451``; nothing acknowledged is lost).

Security notes: the payloads are parsed with the spool's own checked codec, never
unpickled; an error crosses as one of the spool's error class names (anything else
becomes ``SpoolWriteError``) and its message, which the front's replies already treat as
text of its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum

from gateway.spool.errors import MessageTooLarge, SpoolError, SpoolFull, SpoolWriteError
from gateway.spool.ids import QueueId
from gateway.spool.model import Envelope, Origin, QueueRecord, initial_state
from gateway.spool.record import decode_record, encode_record

MAX_PAYLOAD = 64 * 1024 * 1024  # above any DATA chunk the front writes
_HEAD = struct.Struct(">BII")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Kind(IntEnum):
    OPEN = 1
    DATA = 2
    COMMIT = 3
    ABORT = 4
    READY = 10
    DONE = 11
    FAILED = 12


class ProtocolError(Exception):
    """A frame the other side should never send: the link is closed."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    handle: int
    payload: bytes


def frame(kind: Kind, handle: int, payload: bytes = b"") -> bytes:
    """One frame, ready for a single ``write``."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    return _HEAD.pack(kind, handle, len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or None at a clean end of stream (between frames)."""
    try:
        head = await reader.readexactly(_HEAD.size)
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise ProtocolError("end of stream inside a frame header") from error
        return None
    kind, handle, length = _head(head, 0)
    try:
        payload = await reader.readexactly(length) if length else b""
    except asyncio.IncompleteReadError as error:
        raise ProtocolError("end of stream inside a frame") from error
    return Frame(kind, handle, payload)


def _head(data: bytes | bytearray, offset: int) -> tuple[Kind, int, int]:
    """A frame header's kind, handle and payload length; ``ProtocolError`` for a kind
    or a length no front would send."""
    kind, handle, length = _HEAD.unpack_from(data, offset)
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"frame payload of {length} bytes (at most {MAX_PAYLOAD})")
    try:
        return Kind(kind), handle, length
    except ValueError:
        raise ProtocolError(f"unknown frame kind {kind}") from None


class FrameDecoder:
    """The frames in a byte stream read by blocking calls (the scribe's side): ``feed``
    what was read, then take ``next_frame`` until it returns None (incomplete)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0  # first byte of ``_buffer`` not yet decoded

    def feed(self, data: bytes | memoryview) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    @property
    def between_frames(self) -> bool:
        """Whether every byte fed so far belongs to a decoded frame (a clean end)."""
        return self._start == len(self._buffer)

    def next_frame(self) -> Frame | None:
        """The next complete frame; ``ProtocolError`` for one no front would send."""
        buffer, start = self._buffer, self._start
        if len(buffer) - start < _HEAD.size:
            return None
        kind, handle, length = _head(buffer, start)
        end = start + _HEAD.size + length
        if len(buffer) < end:
            return None
        self._start = end
        return Frame(kind, handle, bytes(buffer[start + _HEAD.size : end]))


# -- OPEN: the provisional record ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewEntry:
    """What ``OPEN`` carries: the facts ``Queue.open_writer`` needs."""

    queue_id: QueueId
    received: datetime
    envelope: Envelope
    origin: Origin


def encode_open(entry: NewEntry) -> bytes:
    """The entry as a record with empty content (module docstring)."""
    record = QueueRecord(
        queue_id=entry.queue_id,
        parent=None,
        received=entry.received,
        created=entry.received,
        content_length=0,
        content_sha256=_EMPTY_SHA256,
        envelope=entry.envelope,
        origin=entry.origin,
        state=initial_state(entry.envelope, entry.received),
    )
    return encode_record(record)


def decode_open(payload: bytes) -> NewEntry:
    """``RecordError`` unless ``payload`` is a record the spool itself would accept."""
    record = decode_record(payload)
    return NewEntry(record.queue_id, record.received, record.envelope, record.origin)


# -- FAILED: an error that crosses -----------------------------------------------------

_ERRORS: dict[str, type[SpoolError]] = {
    cls.__name__: cls for cls in (SpoolError, SpoolWriteError, SpoolFull)
}


def encode_failure(error: BaseException) -> bytes:
    """The error as the front will raise it: a spool error keeps its class and message,
    anything else becomes ``SpoolWriteError`` (never a traceback's text)."""
    if isinstance(error, MessageTooLarge):
        document: dict[str, object] = {"error": "MessageTooLarge", "limit": error.limit}
    elif isinstance(error, SpoolError) and type(error).__name__ in _ERRORS:
        document = {"error": type(error).__name__, "message": str(error)}
    else:
        document = {"error": "SpoolWriteError", "message": "the spool scribe failed"}
    return json.dumps(document, ensure_ascii=True).encode("ascii")


def decode_failure(payload: bytes) -> SpoolError:
    """The error ``encode_failure`` wrote; a ``SpoolWriteError`` if it cannot be read."""
    try:
        document = json.loads(payload)
        name = document["error"]
        if name == "MessageTooLarge":
            return MessageTooLarge(int(document["limit"]))
        return _ERRORS[name](str(document["message"]))
    except (ValueError, KeyError, TypeError):
        return SpoolWriteError("the spool scribe sent an unreadable failure")
