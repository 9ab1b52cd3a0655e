"""Tamper detection: raw SQL edits, deletions, reorderings and rewrites of the trail."""

from __future__ import annotations

import dataclasses
import itertools
import sqlite3
from pathlib import Path

import pytest

from gateway.audit import Anchor, AuditStore
from gateway.audit.record import (
    GENESIS_HASH,
    Row,
    canonical_bytes,
    chain_hash,
    record_from_row,
    row_of,
    seal,
)
from gateway.audit.store import _INSERT

from .events import make_event


def _problem(store: AuditStore, anchor: Anchor | None = None) -> tuple[int, str]:
    report = store.verify(anchor)
    assert report.problem is not None, "tampering went unnoticed"
    return report.problem.seq, report.problem.reason


def test_round_trip_verifies_and_reports_the_head(store: AuditStore) -> None:
    receipts = store.append([make_event(10), make_event(11)])
    report = store.verify()
    assert report.ok
    assert report.records == 12
    assert report.first_seq == 1
    assert report.head == receipts[-1] == store.head()
    assert [r.seq for r in receipts] == [11, 12]


def test_an_empty_trail_verifies(db_path: Path) -> None:
    with AuditStore.open_writer(db_path) as empty:
        report = empty.verify()
    assert report.ok and report.records == 0 and report.head is None


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("queue_id", "'Q999999'"),
        ("mail_from", "'mallory@evil.test'"),
        ("rcpt_to", """'["someone-else@x.test"]'"""),
        ("outcome", "'rejected'"),
        ("time", "'2026-01-01T09:30:00.000000Z'"),
        ("details", """'{"listener":"mx"}'"""),
        ("sha256", "NULL"),
        ("hash", "'" + "0" * 64 + "'"),
    ],
)
def test_an_edited_field_is_named_by_its_seq(
    store: AuditStore, raw: sqlite3.Connection, column: str, value: str
) -> None:
    raw.execute(f"UPDATE audit_log SET {column} = {value} WHERE seq = 4")  # noqa: S608
    assert _problem(store) == (4, "hash mismatch (record edited)")


def test_an_edited_prev_hash_breaks_the_link_at_that_seq(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE audit_log SET prev_hash = ? WHERE seq = 6", ("1" * 64,))
    seq, reason = _problem(store)
    assert seq == 6 and "does not follow seq 5" in reason


def test_an_unreadable_field_is_named_by_its_seq(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE audit_log SET rcpt_to = 'bob@x.test' WHERE seq = 7")
    seq, reason = _problem(store)
    assert seq == 7 and "unreadable" in reason


def _row(raw: sqlite3.Connection, seq: int) -> Row:
    values = raw.execute("SELECT * FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    return Row(*values)


def test_an_edited_record_rehashed_alone_shows_at_the_next_one(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    row = _row(raw, 3)
    event = dataclasses.replace(record_from_row(row).event, outcome="rejected")
    forged = seal(3, event, row.prev_hash)
    raw.execute("UPDATE audit_log SET outcome = 'rejected', hash = ? WHERE seq = 3", (forged.hash,))
    seq, reason = _problem(store)
    assert seq == 4 and "does not follow seq 3" in reason


def test_a_deleted_middle_record_is_named(store: AuditStore, raw: sqlite3.Connection) -> None:
    raw.execute("DELETE FROM audit_log WHERE seq = 5")
    seq, reason = _problem(store)
    assert seq == 5 and "record missing (deleted)" in reason and "seq 6" in reason


def test_a_deleted_first_record_is_named(store: AuditStore, raw: sqlite3.Connection) -> None:
    raw.execute("DELETE FROM audit_log WHERE seq = 1")
    seq, reason = _problem(store)
    assert seq == 2 and "no checkpoint accounts for them" in reason


def test_a_deletion_hidden_by_renumbering_is_named(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    raw.execute("DELETE FROM audit_log WHERE seq = 5")
    raw.execute("UPDATE audit_log SET seq = seq - 1 WHERE seq > 5")
    seq, _ = _problem(store)
    assert seq == 5


def test_swapped_records_are_named(store: AuditStore, raw: sqlite3.Connection) -> None:
    columns = [c for c in Row._fields if c != "seq"]
    five = raw.execute(f"SELECT {', '.join(columns)} FROM audit_log WHERE seq = 5").fetchone()  # noqa: S608
    six = raw.execute(f"SELECT {', '.join(columns)} FROM audit_log WHERE seq = 6").fetchone()  # noqa: S608
    assignments = ", ".join(f"{c} = ?" for c in columns)
    raw.execute(f"UPDATE audit_log SET {assignments} WHERE seq = 5", six)  # noqa: S608
    raw.execute(f"UPDATE audit_log SET {assignments} WHERE seq = 6", five)  # noqa: S608
    seq, reason = _problem(store)
    assert seq == 5 and "reordered" in reason


def test_swapped_event_fields_only_are_named_as_an_edit(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    raw.execute(
        "UPDATE audit_log SET queue_id = CASE seq WHEN 2 THEN 'Q000002' ELSE 'Q000001' END"
        " WHERE seq IN (1, 2)"
    )
    assert _problem(store) == (1, "hash mismatch (record edited)")


def _rewrite_from(raw: sqlite3.Connection, seq: int, outcome: str) -> None:
    """The strong attacker: edit one record and recompute every later hash."""
    rows = [
        Row(*values)
        for values in raw.execute("SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq", (seq,))
    ]
    prev_hash = rows[0].prev_hash
    raw.execute("BEGIN")
    for row in rows:
        event = record_from_row(row).event
        if row.seq == seq:
            event = dataclasses.replace(event, outcome=outcome)
        sealed = seal(row.seq, event, prev_hash)
        prev_hash = sealed.hash
        raw.execute("DELETE FROM audit_log WHERE seq = ?", (row.seq,))
        raw.execute(_INSERT, row_of(sealed))
    raw.execute("COMMIT")


def test_a_full_rewrite_passes_without_an_anchor_and_fails_with_one(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    noted = store.verify().head
    assert noted is not None
    _rewrite_from(raw, 3, "rejected")
    assert store.verify().ok  # the documented limit of a bare hash chain
    seq, reason = _problem(store, Anchor(noted.seq, noted.hash))
    assert seq == noted.seq and "anchor" in reason


def test_an_anchor_in_the_middle_catches_a_rewrite_before_it(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    rows = list(store.iter_rows())
    _rewrite_from(raw, 2, "rejected")
    seq, _ = _problem(store, Anchor(rows[4].seq, rows[4].hash))
    assert seq == 5


def test_truncation_passes_without_an_anchor_and_fails_with_one(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    noted = store.head()
    assert noted is not None
    raw.execute("DELETE FROM audit_log WHERE seq > 8")
    assert store.verify().ok
    seq, reason = _problem(store, Anchor(noted.seq, noted.hash))
    assert seq == 9 and "truncated" in reason


def test_a_matching_anchor_is_reported_as_checked(store: AuditStore) -> None:
    head = store.head()
    assert head is not None
    report = store.verify(Anchor.parse(f"seq={head.seq} hash={head.hash}"))
    assert report.ok and report.anchor_checked is True


@pytest.mark.parametrize("text", ["", "12", "0:" + "a" * 64, "3:" + "a" * 63, "x:" + "a" * 64])
def test_bad_anchors_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="SEQ:HASH"):
        Anchor.parse(text)


def test_chain_hash_is_what_the_store_wrote(store: AuditStore) -> None:
    rows = list(store.iter_rows())
    assert rows[0].prev_hash == GENESIS_HASH
    for previous, row in itertools.pairwise(rows):
        assert row.prev_hash == previous.hash
        record = record_from_row(row)
        assert row.hash == chain_hash(row.prev_hash, canonical_bytes(record.seq, record.event))
