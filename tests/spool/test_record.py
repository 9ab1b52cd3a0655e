"""The queue record: checked values, a strict codec, and every kind of damage is a RecordError."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from datetime import UTC, datetime, timedelta

import pytest

from gateway.spool.ids import new_queue_id
from gateway.spool.model import (
    Envelope,
    MailParams,
    Origin,
    QueueRecord,
    Recipient,
    RecipientState,
    RecipientStatus,
    RecordError,
    initial_state,
)
from gateway.spool.record import (
    DIGEST_SIZE,
    PREAMBLE_SIZE,
    Preamble,
    decode_preamble,
    decode_record,
    decode_trailer,
    encode_record,
    encode_trailer,
)

from .support import envelope, origin

NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def make_record(env: Envelope | None = None, length: int = 42) -> QueueRecord:
    env = env or envelope("bob@clinique-b.test", "carol@apicrypt.test")
    return QueueRecord(
        queue_id=new_queue_id(),
        parent=None,
        received=NOW,
        created=NOW,
        content_length=length,
        content_sha256="ab" * 32,
        envelope=env,
        origin=origin(),
        state=initial_state(env, NOW),
    )


def file_bytes(record: QueueRecord, content: bytes | None = None) -> bytes:
    content = bytes(record.content_length) if content is None else content
    payload = encode_record(record)
    preamble = Preamble(record.content_length, len(payload))
    return preamble.encode() + content + encode_trailer(preamble, payload)


def parse_file(data: bytes) -> QueueRecord:
    preamble = decode_preamble(data[:PREAMBLE_SIZE])
    if len(data) != preamble.file_size:
        raise RecordError("size")
    return decode_trailer(preamble, data[preamble.record_offset :])


def test_a_record_round_trips_exactly() -> None:
    record = make_record()
    assert decode_record(encode_record(record)) == record
    assert parse_file(file_bytes(record)) == record


def test_a_changed_state_round_trips_and_counts_revisions() -> None:
    record = make_record()
    later = NOW + timedelta(minutes=5)
    states = (
        RecipientState(RecipientStatus.DEFERRED, 2, "451 4.4.1 no answer", later),
        RecipientState(RecipientStatus.DELIVERED, 1),
    )
    updated = record.with_state(NOW, states, next_attempt=later, note="peer down")
    assert updated.state.revision == 1
    assert updated.unfinished == (0,)
    assert decode_record(encode_record(updated)) == updated


def test_smtputf8_and_surrogate_escaped_addresses_round_trip_in_ascii_json() -> None:
    env = Envelope(
        "médecin@hôpital.test",
        (Recipient("pat\udcffient@x.test"), Recipient("δοκιμή@παράδειγμα.test")),
        MailParams(smtputf8=True),
    )
    payload = encode_record(make_record(env))
    assert payload.isascii()
    assert decode_record(payload).envelope == env


def test_a_null_sender_is_allowed() -> None:
    env = Envelope("", (Recipient("bob@clinique-b.test"),))
    assert decode_record(encode_record(make_record(env))).envelope.mail_from == ""


@pytest.mark.parametrize(
    "build",
    [
        lambda: Recipient("bob@x.test\r\nBcc: eve@evil.test"),
        lambda: Recipient("bob@x.test\x00"),
        lambda: Recipient(""),
        lambda: Recipient("bob@x.test", notify=("NEVER", "SUCCESS")),
        lambda: Recipient("bob@x.test", notify=("SUCCESS", "SUCCESS")),
        lambda: Recipient("bob@x.test", notify=("sometimes",)),
        lambda: Recipient("bob@x.test", notify=()),
        lambda: Recipient("bob@x.test", orcpt="no-type"),
        lambda: MailParams(body="9BIT"),
        lambda: MailParams(ret="ALL"),
        lambda: MailParams(envid="x" * 101),
        lambda: MailParams(envid="é"),
        lambda: MailParams(size=-1),
        lambda: Envelope("a@b.test", ()),
        lambda: Origin("mx", helo="evil\nHeader: x"),
        lambda: RecipientState("lost"),
        lambda: RecipientState(attempts=-1),
    ],
)
def test_bad_values_are_refused_when_built(build: object) -> None:
    with pytest.raises(RecordError):
        build()  # type: ignore[operator]


def test_recipient_states_must_match_the_recipients() -> None:
    record = make_record()
    with pytest.raises(RecordError, match="states for"):
        record.with_state(NOW, (RecipientState(),))


def _mutated_payload(record: QueueRecord, change: object) -> bytes:
    data = json.loads(encode_record(record))
    change(data)  # type: ignore[operator]
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(extra=1), "unknown keys"),
        (lambda d: d.pop("origin"), "missing keys"),
        (lambda d: d["mail"].update(size=True), "integer"),
        (lambda d: d["recipients"][0].update(status="gone"), "status"),
        (lambda d: d["recipients"].clear(), "0 recipients"),
        (lambda d: d.update(queue_id="../../etc/passwd"), "queue id"),
        (lambda d: d.update(received="yesterday"), "received"),
        (lambda d: d["content"].update(sha256="XYZ"), "sha256"),
        (lambda d: d["recipients"][0].update(address="a@b\r\nX: y"), "control character"),
        # checked once, by the constructors (record.py, "Checked once"): still refused,
        # under the field's own name
        (lambda d: d.update(queue_id=12), "queue_id: not a queue id"),
        (lambda d: d.update(parent="not-an-id"), "parent: not a queue id"),
        (lambda d: d.update(parent=[]), "parent: not a queue id"),
        (lambda d: d.update(created="2026-11-28T12:00:00Z"), "created"),
        (lambda d: d.update(received=None), "received: expected a time"),
        (lambda d: d["content"].update(length=-1), "content.length"),
        (lambda d: d["content"].update(length=True), "content.length"),
        (lambda d: d["content"].update(length="10"), "content.length"),
        (lambda d: d["state"].update(updated="2026-02-30T00:00:00.000000Z"), "state.updated"),
        (lambda d: d["state"].update(next_attempt="soon"), "state.next_attempt"),
        (lambda d: d["state"].update(revision=-1), "state.revision"),
        (lambda d: d["recipients"][0].update(next_attempt=3), "state.next_attempt"),
        (lambda d: d["recipients"][0].update(status=None), "recipients\\[0\\].status"),
    ],
)
def test_a_record_with_a_bad_field_is_refused(change: object, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        decode_record(_mutated_payload(make_record(), change))


def _child(parent_stage: str | None) -> QueueRecord:
    return dataclasses.replace(make_record(), parent=new_queue_id(), parent_stage=parent_stage)


def test_the_parent_stage_of_a_child_round_trips() -> None:
    record = _child("relay/clinique-b")
    assert json.loads(encode_record(record))["parent_stage"] == "relay/clinique-b"
    assert decode_record(encode_record(record)) == record
    assert parse_file(file_bytes(record)) == record


def test_a_record_without_a_parent_stage_is_written_and_read_as_format_1() -> None:
    """Records written before the field existed (and every record without one) have no
    ``parent_stage`` key: this version writes exactly those bytes and reads them."""
    record = _child(None)
    data = json.loads(encode_record(record))
    assert "parent_stage" not in data
    assert set(data) == {
        "queue_id", "parent", "received", "created", "content", "mail", "recipients",
        "origin", "state",
    }  # fmt: skip
    assert decode_record(encode_record(record)).parent_stage is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(parent_stage=None), "parent_stage: expected a stage name"),
        (lambda d: d.update(parent_stage="../../etc"), "parent_stage: not a spool stage"),
        (lambda d: d.update(parent_stage="relay/"), "parent_stage: not a spool stage"),
        (lambda d: d.update(parent=None), "parent_stage: set without a parent"),
        (lambda d: d.update(parent_stages="received"), "unknown keys"),
    ],
)
def test_a_bad_parent_stage_is_refused(change: object, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        decode_record(_mutated_payload(_child("received"), change))


def test_a_duplicate_key_is_refused() -> None:
    payload = encode_record(make_record())
    doubled = payload[:-1] + b',"parent":null}'
    with pytest.raises(RecordError, match="duplicate key"):
        decode_record(doubled)


@pytest.mark.parametrize("payload", [b"", b"[]", b"{", b"\xff\xfe", '{"é":1}'.encode()])
def test_what_is_not_a_json_record_is_refused(payload: bytes) -> None:
    with pytest.raises(RecordError):
        decode_record(payload)


def test_preamble_damage_is_detected() -> None:
    data = bytearray(file_bytes(make_record()))
    good = bytes(data[:PREAMBLE_SIZE])
    assert decode_preamble(good).content_length == 42
    with pytest.raises(RecordError, match="truncated"):
        decode_preamble(good[:20])
    with pytest.raises(RecordError, match="bad magic"):
        decode_preamble(b"X" + good[1:])
    flipped = bytearray(good)
    flipped[15] ^= 1  # record length
    with pytest.raises(RecordError, match="checksum"):
        decode_preamble(bytes(flipped))


def _preamble_with(version: int = 1, flags: int = 0) -> bytes:
    head = struct.pack(">8sHHIQI", b"MISSIVEQ", version, flags, 100, 0, 0)
    return head + struct.pack(">I", zlib.crc32(head))


def test_another_format_version_or_reserved_bits_are_refused() -> None:
    with pytest.raises(RecordError, match="format version 2"):
        decode_preamble(_preamble_with(version=2))
    with pytest.raises(RecordError, match="reserved"):
        decode_preamble(_preamble_with(flags=1))


def test_record_damage_and_truncation_are_detected() -> None:
    record = make_record()
    data = file_bytes(record)
    preamble = decode_preamble(data[:PREAMBLE_SIZE])
    trailer = data[preamble.record_offset :]
    damaged = bytearray(trailer)
    damaged[10] ^= 0x20
    with pytest.raises(RecordError, match="checksum"):
        decode_trailer(preamble, bytes(damaged))
    with pytest.raises(RecordError, match="truncated"):
        decode_trailer(preamble, trailer[:-1])
    assert len(trailer) == preamble.record_length + DIGEST_SIZE


def test_a_content_length_that_differs_from_the_record_is_refused() -> None:
    record = make_record(length=42)
    payload = encode_record(record)
    lying = Preamble(41, len(payload))
    with pytest.raises(RecordError, match="content length"):
        decode_trailer(lying, encode_trailer(lying, payload))
