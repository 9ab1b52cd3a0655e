"""Canonical bytes, chain hashes and the row codec (pure: no database)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import AuditEvent
from gateway.audit.chain import verify_rows
from gateway.audit.record import (
    COLUMNS,
    GENESIS_HASH,
    RecordFormatError,
    Row,
    canonical_bytes,
    recomputed_hash,
    record_from_row,
    row_of,
    seal,
)
from gateway.audit.store import _INSERT

from .events import any_event as _events

MOMENT = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


def test_canonical_bytes_are_the_documented_form() -> None:
    event = AuditEvent(
        "smtp.accepted",
        time=MOMENT,
        queue_id="Q1",
        rcpt_to=("é@x.test",),
        details={"note": 'a"b\\c\n\x01'},
    )
    expected = (
        '{"actor":null,"algorithms":[],"cert_serials":[],"details":{"note":"a\\"b\\\\c\\n\\u0001"},'
        '"mail_from":null,"message_id":null,"outcome":null,"peer":null,"queue_id":"Q1",'
        '"rcpt_to":["é@x.test"],"seq":7,"sha256":null,"time":"2026-11-28T12:00:00.123456Z",'
        '"type":"smtp.accepted","v":1}'
    ).encode()
    assert canonical_bytes(7, event) == expected


def test_hash_covers_the_previous_hash_then_the_record() -> None:
    event = AuditEvent("smtp.accepted", time=MOMENT)
    first = seal(1, event, GENESIS_HASH)
    assert first.hash == hashlib.sha256(bytes(32) + canonical_bytes(1, event)).hexdigest()
    second = seal(2, event, first.hash)
    assert second.prev_hash == first.hash
    assert second.hash != first.hash  # same event, other place: other hash
    assert recomputed_hash(second) == second.hash


def test_sealing_needs_a_time() -> None:
    with pytest.raises(ValueError, match="time"):
        seal(1, AuditEvent("smtp.accepted"), GENESIS_HASH)


def test_insert_statement_names_the_row_columns_in_order() -> None:
    listed = _INSERT.split("(", 1)[1].split(")", 1)[0]
    assert tuple(name.strip() for name in listed.split(",")) == COLUMNS


def _valid_row() -> Row:
    return row_of(seal(3, AuditEvent("smtp.accepted", time=MOMENT, rcpt_to=("a@x",)), "ab" * 32))


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("rcpt_to", "a@x", "rcpt_to is not a JSON list"),
        ("rcpt_to", "[1]", "rcpt_to is not a JSON list"),
        ("cert_serials", "{}", "cert_serials is not a JSON list"),
        ("details", "[]", "details is not a JSON object"),
        ("details", '{"k": 1}', "details is not a JSON object"),
        ("time", "2026-11-28 12:00:00", "not a trail time"),
        ("type", "Not A Type", "dotted"),
        ("prev_hash", "zz" * 32, "prev_hash is not a SHA-256"),
        ("hash", "ab " * 21 + "a", "hash is not a SHA-256"),
        ("sha256", "xyz", "sha256"),
        ("queue_id", 42, "expected str"),
    ],
)
def test_rows_the_writer_cannot_produce_are_unreadable(
    column: str, value: object, reason: str
) -> None:
    changes: dict[str, Any] = {column: value}
    row = _valid_row()._replace(**changes)
    with pytest.raises(RecordFormatError, match=reason) as caught:
        record_from_row(row)
    assert caught.value.seq == 3


# no deadline (the machine is shared: no timed assertions), no example database on disk
_PROPERTY = settings(deadline=None, database=None)


@_PROPERTY
@given(event=_events, seq=st.integers(min_value=1, max_value=2**62))
def test_any_event_survives_the_row_codec_with_its_hash(event: AuditEvent, seq: int) -> None:
    record = seal(seq, event, GENESIS_HASH)
    decoded = record_from_row(row_of(record))
    assert decoded == record
    assert recomputed_hash(decoded) == record.hash


_cell = st.one_of(st.none(), st.integers(), st.text(), st.text('[]{}",:0123456789abcdefTZ.-'))


@_PROPERTY
@given(row=st.builds(Row, *(_cell for _ in COLUMNS)))
def test_arbitrary_rows_decode_or_fail_with_record_format_error(row: Row) -> None:
    try:
        record_from_row(row)
    except RecordFormatError:
        pass


@_PROPERTY
@given(column=st.sampled_from(COLUMNS), value=_cell)
def test_a_changed_column_passes_only_if_it_means_the_same(column: str, value: object) -> None:
    """Verification never raises, and accepts a changed row only when it decodes to the
    very same record (e.g. the same JSON list written with other spacing)."""
    event = AuditEvent("smtp.accepted", time=MOMENT, rcpt_to=("a@x",), details={"k": "v"})
    original = row_of(seal(1, event, GENESIS_HASH))
    changes: dict[str, Any] = {column: value}
    changed = original._replace(**changes)
    report = verify_rows([changed])
    if report.ok:
        assert record_from_row(changed) == record_from_row(original)
    else:
        renumbered = column == "seq" and isinstance(value, int)
        assert report.problem is not None
        assert report.problem.seq == (value if renumbered else 1)
        assert value != getattr(original, column)
