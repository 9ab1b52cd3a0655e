"""The queue record codec: one spool file as bytes, and back (sans-IO).

One entry is one file, written once and never modified in place::

    preamble   32 bytes  magic "MISSIVEQ", format version (u16), flags (u16, zero),
                         record length (u32), content length (u64), zero (u32),
                         CRC-32 of the 28 bytes before it (all integers big-endian)
    content    the message exactly as accepted (CRLF lines, dot-unstuffed), any size
    record     ASCII JSON: queue id, parent (and its stage), times, content length
               and SHA-256,
               envelope (MAIL FROM and its parameters, each RCPT with NOTIFY/ORCPT),
               origin (listener, client, TLS, client certificate DN, AUTH login) and
               the state (per-recipient status, attempts, last error, next attempt)
    digest     32 bytes  SHA-256 over the first 28 preamble bytes and the record

The file size must be exactly 32 + content + record + 32, which is the END marker
(Postfix ends its queue files with an explicit END record, STYLE 5): a truncated file,
a flipped bit in the preamble or the record, an unknown version, an unknown or missing
JSON key, a duplicate key or a value out of range all raise ``RecordError``; the queue
then moves the file to ``corrupt/``. The content is checked against its SHA-256 as it is
read (``gateway.spool.entry``), since checking 50 MB on every claim would cost more than
the claim.

Decisions (measured in ``bench/bench_spool.py``, see docs/spool.md):

- **Content and record in one file**, content first. One file is one ``rename`` per
  state change, atomic by construction; an entry split in two files (or a directory
  per entry) needs two more fsyncs per accepted message and cannot move atomically.
  The content comes first because it is streamed while it arrives (its length and
  digest are known only at the end); the preamble is patched with ``pwrite`` before
  the file's fsync, so a reader needs two small reads (preamble, then record) and
  never scans the content.
- **Written once.** A state change (defer with new per-recipient states, hold with a
  note) writes a new file - same content copied in the kernel (``copy_file_range``),
  new record - that atomically replaces the old one, so every file anyone can open is
  complete and validates, and a reader (the CLI, while the gateway runs) never meets
  a half-written update. The cost is a content copy per retry, measured and bounded
  (retries are the exception; see the benchmark).
- **JSON** for the record: ``cat`` shows it, ``json.loads`` is strict enough with an
  explicit key check, and ``ensure_ascii`` keeps it ASCII even for SMTPUTF8 addresses
  or bytes decoded with ``surrogateescape`` (they round-trip exactly).
- **One optional key, no version bump.** ``parent_stage`` (the stage of the entry's
  parent, for the tombstone check, ``gateway.spool.tombstones``) was added after
  format 1 shipped. It is written only when set (hand-off children); a record without
  it (every file written before, every entry without a parent) is exactly format 1,
  and this reader accepts both. Every other key stays required and any unknown key is
  still refused. Not bumped because nothing this version reads changes meaning: a
  bump would make this gateway's own entries without a parent unreadable by the
  previous one for no reason. The price: a child written by this version, read by an
  older gateway (a downgrade), goes to ``corrupt/`` with "unknown keys
  ['parent_stage']" instead of "format version 2" - kept, never deleted, and readable
  again once upgraded (move it back to ``incoming/``), like any newer file.

The values themselves (``Envelope``, ``Origin``, ``RecipientState``, ``QueueRecord``)
and their checks are in ``gateway.spool.model``; this module adds the strict JSON
mapping (exact key sets, no duplicate keys) and the framing.

Checked once (session 9, CPU per claim): ``decode_record`` hands the raw JSON values to
the model's constructors, whose ``__post_init__`` checks (and converts: a time string
becomes a UTC ``datetime``) each of them under the same name as before; it used to check
the ids, times and lengths here first, then the constructors checked them again. Only
what the constructors cannot see is decided here: the exact key sets, duplicate keys,
the status keyword under its recipient's index, and that a present ``parent_stage`` is
a stage (``null`` is refused, not taken for "absent"). One ``JSONDecoder`` serves every
record, and duplicate keys are found by comparing sizes (``_no_duplicate_keys``); one
``JSONEncoder`` (same options as before, same bytes) writes them.
Measured: 29 us of CPU per decode of a one-recipient record instead of 33 (five
alternated runs of 20,000; ``tests/spool/test_record.py`` keeps every refusal).

Trust level: pure functions over bytes and frozen dataclasses; no I/O.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.audit.event import format_time
from gateway.spool.model import (
    STATUS_VALUES,
    EntryState,
    Envelope,
    MailParams,
    Origin,
    QueueRecord,
    Recipient,
    RecipientState,
    RecordError,
    check_keyword,
    check_stage,
)

FORMAT_VERSION = 1
MAGIC = b"MISSIVEQ"
_HEAD = struct.Struct(">8sHHIQI")  # magic, version, flags, record length, content length, 0
_CRC = struct.Struct(">I")
PREAMBLE_SIZE = _HEAD.size + _CRC.size  # 32
DIGEST_SIZE = 32
MAX_RECORD_LENGTH = 16 * 1024 * 1024


# -- JSON mapping ----------------------------------------------------------------------


def _time_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_time(value)


def _record_to_json(record: QueueRecord) -> dict[str, Any]:
    params = record.envelope.params
    origin = record.origin
    optional = {} if record.parent_stage is None else {"parent_stage": record.parent_stage}
    return {
        **optional,
        "queue_id": record.queue_id,
        "parent": record.parent,
        "received": format_time(record.received),
        "created": format_time(record.created),
        "content": {"length": record.content_length, "sha256": record.content_sha256},
        "mail": {
            "from": record.envelope.mail_from,
            "size": params.size,
            "body": params.body,
            "smtputf8": params.smtputf8,
            "ret": params.ret,
            "envid": params.envid,
            "auth": params.auth,
        },
        "recipients": [
            {
                "address": rcpt.address,
                "notify": None if rcpt.notify is None else list(rcpt.notify),
                "orcpt": rcpt.orcpt,
                "status": str(state.status),
                "attempts": state.attempts,
                "last_error": state.last_error,
                "next_attempt": _time_or_none(state.next_attempt),
            }
            for rcpt, state in record.recipients
        ],
        "origin": {
            "listener": origin.listener,
            "client_address": origin.client_address,
            "helo": origin.helo,
            "tls_version": origin.tls_version,
            "tls_cipher": origin.tls_cipher,
            "client_cert_dn": origin.client_cert_dn,
            "auth_login": origin.auth_login,
        },
        "state": {
            "revision": record.state.revision,
            "updated": format_time(record.state.updated),
            "next_attempt": _time_or_none(record.state.next_attempt),
            "note": record.state.note,
        },
    }


def _object(
    where: str, value: object, keys: frozenset[str], optional: frozenset[str] = frozenset()
) -> Mapping[str, object]:
    """``value`` if it is an object with exactly ``keys``, plus any of ``optional``."""
    if not isinstance(value, dict):
        raise RecordError(f"{where}: expected an object")
    # ``keys`` and ``optional`` are disjoint: the first test settles the usual case
    # without building a set
    if value.keys() != keys and value.keys() - optional != keys:
        missing = sorted(keys - value.keys())
        unknown = sorted(value.keys() - keys - optional)
        raise RecordError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    return value


_TOP_KEYS = frozenset(
    {"queue_id", "parent", "received", "created", "content", "mail", "recipients"}
    | {"origin", "state"}
)
_TOP_OPTIONAL = frozenset({"parent_stage"})  # written only when set (module docstring)
_CONTENT_KEYS = frozenset({"length", "sha256"})
_MAIL_KEYS = frozenset({"from", "size", "body", "smtputf8", "ret", "envid", "auth"})
_RCPT_KEYS = frozenset(
    {"address", "notify", "orcpt", "status", "attempts", "last_error", "next_attempt"}
)
_ORIGIN_KEYS = frozenset(
    {"listener", "client_address", "helo", "tls_version", "tls_cipher"}
    | {"client_cert_dn", "auth_login"}
)
_STATE_KEYS = frozenset({"revision", "updated", "next_attempt", "note"})


def _recipient_from_json(index: int, value: object) -> tuple[Recipient, RecipientState]:
    item = _object(f"recipients[{index}]", value, _RCPT_KEYS)
    status = check_keyword(f"recipients[{index}].status", item["status"], STATUS_VALUES)
    recipient = Recipient(
        address=item["address"],  # type: ignore[arg-type]  # checked by __post_init__
        notify=item["notify"],  # type: ignore[arg-type]
        orcpt=item["orcpt"],  # type: ignore[arg-type]
    )
    state = RecipientState(
        status=status,  # type: ignore[arg-type]  # made a RecipientStatus by __post_init__
        attempts=item["attempts"],  # type: ignore[arg-type]
        last_error=item["last_error"],  # type: ignore[arg-type]
        next_attempt=item["next_attempt"],  # type: ignore[arg-type]
    )
    return recipient, state


def _record_from_json(data: object) -> QueueRecord:
    top = _object("record", data, _TOP_KEYS, _TOP_OPTIONAL)
    content = _object("content", top["content"], _CONTENT_KEYS)
    mail = _object("mail", top["mail"], _MAIL_KEYS)
    origin = _object("origin", top["origin"], _ORIGIN_KEYS)
    state = _object("state", top["state"], _STATE_KEYS)
    rcpts = top["recipients"]
    if not isinstance(rcpts, list):
        raise RecordError("recipients: expected a list")
    pairs = [_recipient_from_json(index, item) for index, item in enumerate(rcpts)]
    params = MailParams(**{key: mail[key] for key in _MAIL_KEYS - {"from"}})  # type: ignore[arg-type]
    envelope = Envelope(
        mail_from=mail["from"],  # type: ignore[arg-type]
        recipients=tuple(recipient for recipient, _ in pairs),
        params=params,
    )
    # The raw JSON values go to the constructors, whose ``__post_init__`` checks each
    # one once, under the same name (module docstring, "Checked once"); only the
    # presence of ``parent_stage`` is decided here (a ``null`` is refused, not absent).
    return QueueRecord(
        queue_id=top["queue_id"],  # type: ignore[arg-type]
        parent=top["parent"],  # type: ignore[arg-type]
        parent_stage=check_stage("parent_stage", top["parent_stage"])
        if "parent_stage" in top
        else None,
        received=top["received"],  # type: ignore[arg-type]
        created=top["created"],  # type: ignore[arg-type]
        content_length=content["length"],  # type: ignore[arg-type]
        content_sha256=content["sha256"],  # type: ignore[arg-type]
        envelope=envelope,
        origin=Origin(**origin),  # type: ignore[arg-type]
        state=EntryState(
            revision=state["revision"],  # type: ignore[arg-type]
            updated=state["updated"],  # type: ignore[arg-type]
            recipients=tuple(recipient_state for _, recipient_state in pairs),
            next_attempt=state["next_attempt"],  # type: ignore[arg-type]
            note=state["note"],  # type: ignore[arg-type]
        ),
    )


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """The object of ``pairs``; ``RecordError`` if a key repeats (built by ``dict`` in C,
    counted to find a repeat: a third of the cost of a loop over the pairs)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:  # one pass: a record may hold many keys (review R1, s9)
            if key in seen:
                raise RecordError(f"record: duplicate key {key!r}")
            seen.add(key)
    return result


# one decoder for every record: ``json.loads`` with a hook builds a new one per call
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


# one encoder for every record: ``json.dumps`` with options builds a new one per call
_ENCODER = json.JSONEncoder(
    ensure_ascii=True, sort_keys=True, separators=(",", ":"), allow_nan=False
)


def encode_record(record: QueueRecord) -> bytes:
    """The record as canonical ASCII JSON (sorted keys, no spaces)."""
    return _ENCODER.encode(_record_to_json(record)).encode("ascii")


def decode_record(payload: bytes) -> QueueRecord:
    """Parse and check a record; ``RecordError`` on anything unexpected."""
    try:
        data = _DECODER.decode(payload.decode("ascii"))
    except RecordError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RecordError(f"record: not JSON ({type(error).__name__})") from None
    try:
        return _record_from_json(data)
    except RecordError:
        raise
    except (ValueError, TypeError) as error:  # e.g. RecipientStatus("x") from a nested call
        raise RecordError(f"record: {error}") from None


# -- framing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Preamble:
    """The fixed 32 bytes at the start of a queue file."""

    content_length: int
    record_length: int

    def __post_init__(self) -> None:
        if not 0 < self.record_length <= MAX_RECORD_LENGTH:
            raise RecordError(
                f"record of {self.record_length} bytes (1 to {MAX_RECORD_LENGTH} allowed)"
            )
        if not 0 <= self.content_length < 1 << 63:
            raise RecordError(f"content length {self.content_length} out of range")

    @property
    def file_size(self) -> int:
        return PREAMBLE_SIZE + self.content_length + self.record_length + DIGEST_SIZE

    @property
    def record_offset(self) -> int:
        return PREAMBLE_SIZE + self.content_length

    def head(self) -> bytes:
        return _HEAD.pack(MAGIC, FORMAT_VERSION, 0, self.record_length, self.content_length, 0)

    def encode(self) -> bytes:
        head = self.head()
        return head + _CRC.pack(zlib.crc32(head))


def decode_preamble(data: bytes) -> Preamble:
    """The preamble's lengths; ``RecordError`` for a short, foreign or newer file."""
    if len(data) < PREAMBLE_SIZE:
        raise RecordError(f"truncated: {len(data)} bytes, shorter than the preamble")
    magic, version, flags, record_length, content_length, zero = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise RecordError("not a Missive queue file (bad magic)")
    (crc,) = _CRC.unpack_from(data, _HEAD.size)
    if crc != zlib.crc32(data[: _HEAD.size]):
        raise RecordError("preamble checksum mismatch")
    if version != FORMAT_VERSION:
        raise RecordError(f"format version {version}, this gateway reads {FORMAT_VERSION}")
    if flags or zero:
        raise RecordError("reserved preamble bits set")
    return Preamble(content_length, record_length)


def record_digest(preamble: Preamble, payload: bytes) -> bytes:
    """SHA-256 binding the lengths, the version and the record together."""
    return hashlib.sha256(preamble.head() + payload).digest()


def encode_trailer(preamble: Preamble, payload: bytes) -> bytes:
    """The bytes after the content: the record and its digest."""
    return payload + record_digest(preamble, payload)


def decode_trailer(preamble: Preamble, trailer: bytes) -> QueueRecord:
    """Check the digest and the record against the preamble; ``RecordError`` if not."""
    if len(trailer) != preamble.record_length + DIGEST_SIZE:
        raise RecordError("truncated record")
    payload = trailer[: preamble.record_length]
    if trailer[preamble.record_length :] != record_digest(preamble, payload):
        raise RecordError("record checksum mismatch")
    record = decode_record(payload)
    if record.content_length != preamble.content_length:
        raise RecordError("content length differs between preamble and record")
    return record
