"""Sealed audit records: canonical bytes, the hash chain, and the row codec.

Role: the sans-IO core of the trail. A record is an ``AuditEvent`` given a sequence
number and sealed into the chain::

    canonical = JCS({"v": 1, "seq": n, "time": "...Z", "type": ..., "queue_id": ...,
                     "message_id": ..., "mail_from": ..., "rcpt_to": [...], "actor": ...,
                     "peer": ..., "cert_serials": [...], "algorithms": [...],
                     "outcome": ..., "sha256": ..., "details": {...}})
    hash      = SHA-256(bytes.fromhex(prev_hash) || canonical)       (lower-case hex)

``JCS`` is the JSON Canonicalization Scheme (RFC 8785): keys sorted, no whitespace,
UTF-8, only ``"``, ``\\`` and control characters escaped. For the values a record
holds (ASCII keys, integers, strings without lone surrogates, null) it is exactly what
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
writes, which is how it is computed here. Every field is present (``null`` or ``[]``
when empty). The first record of a trail has ``prev_hash`` = 64 zeros (``GENESIS``).
Because ``seq`` is inside the hashed bytes and each hash covers the previous one, an
edited, deleted, inserted or reordered record breaks the chain at that point. An
auditor can recompute every hash from ``missive audit export --format jsonl`` with
nothing but a JSON library and SHA-256 (drop ``prev_hash`` and ``hash``, add
``"v": 1``).

Rows are stored one column per field (tuples and ``details`` as JSON text) and the hash
is recomputed from the decoded values, so an edit of any column that changes a value
changes the hash (re-spacing a JSON list changes nothing and is not reported). Decoding
is strict: a value that the writer could not have produced (a time in another format, a
list of numbers) is reported as unreadable (``RecordFormatError``).

Two ways to the same bytes (the writer's CPU is paid for every event of every stage):

- ``canonical_bytes`` builds the document and hands it to the C JSON encoder with
  ``sort_keys``: the reference, used by the verifier (``recomputed_hash``) and by
  ``seal``;
- ``seal_row`` (the store's writer) encodes each value once with the same C string
  encoder (``json.encoder.encode_basestring``, what ``json.dumps`` uses with
  ``ensure_ascii=False``) and drops the pieces into a template whose keys are already
  in sorted order; the JSON text of each list and of ``details`` serves both the row and
  the canonical form, and the time is rendered once. ``details`` goes in key order in
  both (events keep it sorted anyway, so stored rows do not change). Tests check that
  both ways give identical bytes for arbitrary events, and the verifier recomputes every
  hash the reference way, so a divergence could not go unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring
from typing import NamedTuple

from gateway.audit.event import AuditEvent, format_time, parse_time

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
CHECKPOINT_TYPE = "audit.checkpoint"
_HASH_RE = re.compile(r"[0-9a-f]{64}")

# built once: json.dumps() with non-default options builds a new encoder at every call
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_decode_json = json.JSONDecoder().decode

JsonValue = str | int | None | list[str] | dict[str, str]


class Row(NamedTuple):
    """One stored record, column by column (the table's order)."""

    seq: int
    time: str
    type: str
    queue_id: str | None
    message_id: str | None
    mail_from: str | None
    rcpt_to: str
    actor: str | None
    peer: str | None
    cert_serials: str
    algorithms: str
    outcome: str | None
    sha256: str | None
    details: str
    prev_hash: str
    hash: str


COLUMNS: tuple[str, ...] = Row._fields


@dataclass(frozen=True, slots=True)
class AuditReceipt:
    """What a committed append returns: where the record sits in the chain."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A sealed record: the event (with its time), its place and its hashes."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str

    @property
    def receipt(self) -> AuditReceipt:
        return AuditReceipt(self.seq, self.hash)


class RecordFormatError(ValueError):
    """A stored row that the writer could not have produced (edited outside Missive)."""

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"seq {seq}: {reason}")


def event_fields(event: AuditEvent) -> dict[str, JsonValue]:
    """The event's fields as JSON values, in column order (time must be set)."""
    if event.time is None:
        raise ValueError("an audit event needs its time before it is sealed")
    return {
        "time": format_time(event.time),
        "type": event.type,
        "queue_id": event.queue_id,
        "message_id": event.message_id,
        "mail_from": event.mail_from,
        "rcpt_to": list(event.rcpt_to),
        "actor": event.actor,
        "peer": event.peer,
        "cert_serials": list(event.cert_serials),
        "algorithms": list(event.algorithms),
        "outcome": event.outcome,
        "sha256": event.sha256,
        "details": dict(event.details),
    }


def canonical_bytes(seq: int, event: AuditEvent) -> bytes:
    """The RFC 8785 form of the record that the chain hashes (see the module docstring)."""
    document: dict[str, JsonValue] = {"v": FORMAT_VERSION, "seq": seq, **event_fields(event)}
    return _CANONICAL_JSON.encode(document).encode("utf-8")


def chain_hash(prev_hash: str, canonical: bytes) -> str:
    """SHA-256 over the previous hash (32 raw bytes) then the canonical record."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


def seal(seq: int, event: AuditEvent, prev_hash: str) -> AuditRecord:
    """Give ``event`` (time set) its place ``seq`` after a record hashed ``prev_hash``."""
    return AuditRecord(seq, event, prev_hash, chain_hash(prev_hash, canonical_bytes(seq, event)))


def recomputed_hash(record: AuditRecord) -> str:
    """The hash the record should carry, from its own fields and its ``prev_hash``."""
    return chain_hash(record.prev_hash, canonical_bytes(record.seq, record.event))


def _json_text(value: object) -> str:
    return _COMPACT_JSON.encode(value)


def row_of(record: AuditRecord) -> Row:
    """The row that stores ``record``."""
    event = record.event
    assert event.time is not None  # sealed records always carry their time
    return Row(
        seq=record.seq,
        time=format_time(event.time),
        type=event.type,
        queue_id=event.queue_id,
        message_id=event.message_id,
        mail_from=event.mail_from,
        rcpt_to=_json_text(list(event.rcpt_to)),
        actor=event.actor,
        peer=event.peer,
        cert_serials=_json_text(list(event.cert_serials)),
        algorithms=_json_text(list(event.algorithms)),
        outcome=event.outcome,
        sha256=event.sha256,
        details=_json_text(dict(event.details)),
        prev_hash=record.prev_hash,
        hash=record.hash,
    )


# the canonical document with its keys in sorted order (RFC 8785 §3.2.3), one slot each
_CANONICAL_TEMPLATE = (
    '{"actor":%s,"algorithms":%s,"cert_serials":%s,"details":%s,"mail_from":%s,'
    '"message_id":%s,"outcome":%s,"peer":%s,"queue_id":%s,"rcpt_to":%s,"seq":%d,'
    '"sha256":%s,"time":%s,"type":%s,"v":%d}'
)


def _json_strings(items: tuple[str, ...]) -> str:
    """A JSON list of strings, compact: what the C encoder writes for it."""
    return "[" + ",".join(map(encode_basestring, items)) + "]" if items else "[]"


def _json_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """A JSON object of strings, compact, in the given order."""
    return (
        "{"
        + ",".join([f"{encode_basestring(key)}:{encode_basestring(val)}" for key, val in pairs])
        + "}"
    )


_new_row = tuple.__new__


def seal_row(seq: int, event: AuditEvent, prev_hash: str, at: datetime | None = None) -> Row:
    """The stored row of ``event`` sealed at ``seq`` after ``prev_hash``, at time ``at``
    (UTC) if given, else at the event's own time (then it must be set).

    Same bytes, hash and row as ``row_of(seal(seq, event.at(at), prev_hash))``, with
    each value encoded once (see the module docstring); ``at`` spares the sink a copy
    of every event on the caller's loop just to stamp its time.
    """
    moment = event.time if at is None else at
    if moment is None:
        raise ValueError("an audit event needs its time before it is sealed")
    time = format_time(moment)
    rcpt_to = _json_strings(event.rcpt_to)
    cert_serials = _json_strings(event.cert_serials)
    algorithms = _json_strings(event.algorithms)
    details = _json_pairs(sorted(event.details.items()))
    queue_id, message_id, mail_from = event.queue_id, event.message_id, event.mail_from
    actor, peer, outcome, sha256 = event.actor, event.peer, event.outcome, event.sha256
    canonical = _CANONICAL_TEMPLATE % (
        "null" if actor is None else encode_basestring(actor),
        algorithms,
        cert_serials,
        details,
        "null" if mail_from is None else encode_basestring(mail_from),
        "null" if message_id is None else encode_basestring(message_id),
        "null" if outcome is None else encode_basestring(outcome),
        "null" if peer is None else encode_basestring(peer),
        "null" if queue_id is None else encode_basestring(queue_id),
        rcpt_to,
        seq,
        "null" if sha256 is None else encode_basestring(sha256),
        encode_basestring(time),
        encode_basestring(event.type),
        FORMAT_VERSION,
    )
    digest = hashlib.sha256(bytes.fromhex(prev_hash) + canonical.encode("utf-8")).hexdigest()
    return _new_row(  # tuple.__new__: skips the Python-level NamedTuple constructor
        Row,
        (
            seq,
            time,
            event.type,
            queue_id,
            message_id,
            mail_from,
            rcpt_to,
            actor,
            peer,
            cert_serials,
            algorithms,
            outcome,
            sha256,
            details,
            prev_hash,
            digest,
        ),
    )


def _decode_list(seq: int, name: str, text: object) -> tuple[str, ...]:
    try:
        value = _decode_json(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RecordFormatError(seq, f"{name} is not a JSON list of strings")
    return tuple(value)


def _decode_details(seq: int, text: object) -> Mapping[str, str]:
    try:
        value = _decode_json(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RecordFormatError(seq, "details is not a JSON object of strings")
    return value


def _decode_hash(seq: int, name: str, value: object) -> str:
    if not isinstance(value, str) or not _HASH_RE.fullmatch(value):
        raise RecordFormatError(seq, f"{name} is not a SHA-256 hex digest")
    return value


def record_from_row(row: Row) -> AuditRecord:
    """Decode a stored row strictly; ``RecordFormatError`` names what is wrong."""
    seq = row.seq
    if not isinstance(seq, int):
        raise RecordFormatError(-1, f"seq is not an integer: {seq!r}")
    try:
        time = parse_time(row.time)
        event = AuditEvent(
            type=row.type,
            time=time,
            queue_id=row.queue_id,
            message_id=row.message_id,
            mail_from=row.mail_from,
            rcpt_to=_decode_list(seq, "rcpt_to", row.rcpt_to),
            actor=row.actor,
            peer=row.peer,
            cert_serials=_decode_list(seq, "cert_serials", row.cert_serials),
            algorithms=_decode_list(seq, "algorithms", row.algorithms),
            outcome=row.outcome,
            sha256=row.sha256,
            details=_decode_details(seq, row.details),
        )
    except RecordFormatError:
        raise
    except (ValueError, TypeError) as error:
        raise RecordFormatError(seq, str(error)) from None
    prev_hash = _decode_hash(seq, "prev_hash", row.prev_hash)
    return AuditRecord(seq, event, prev_hash, _decode_hash(seq, "hash", row.hash))
