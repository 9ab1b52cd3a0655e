"""``missive audit export`` verifies the chain before it exports (session 6, H2).

An export of a tampered trail used to look exactly like an export of a sound one. Now
a break anywhere in the trail (before, inside or after the range) means nothing is
written and exit 1 with ``verify``'s lines on stderr; ``--allow-broken`` writes it
anyway, opened by a line that says it is unverified and where the chain broke. A sound
export stays byte-for-byte what it was (golden text below, written by the old code).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.audit import AuditEvent, AuditStore
from gateway.audit.export import TimeRange, export_verified
from gateway.audit.record import COLUMNS, RecordFormatError
from tests.cli_runner import Run

from .events import T0, make_event

REFUSED = (
    "nothing exported: the trail does not verify (--allow-broken exports it anyway, "
    "opened by an UNVERIFIED EXPORT line)"
)
EDIT_SEQ_4 = "UPDATE audit_log SET rcpt_to = '[\"x@evil.test\"]' WHERE seq = 4"


def _export(missive: Run, db_path: Path, *options: str | Path) -> tuple[int, str, str]:
    return missive("audit", "export", "--db", db_path, *options)


# -- a break means nothing is written ---------------------------------------------------


@pytest.mark.parametrize("export_format", ["jsonl", "csv"])
def test_an_edited_record_stops_the_export_and_writes_nothing(
    missive: Run, db_path: Path, raw: sqlite3.Connection, export_format: str
) -> None:
    raw.execute(EDIT_SEQ_4)
    status, out, err = _export(missive, db_path, "--format", export_format)
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        "BROKEN at seq 4: hash mismatch (record edited)",
        "3 records before it verified",
        REFUSED,
    ]


@pytest.mark.parametrize(
    ("edited", "bounds"),
    [
        (2, ["--since", "2026-01-01T12:00"]),  # before the range (seq 5..10)
        (9, ["--until", "2026-01-01T12:00"]),  # after the range (seq 1..4)
    ],
)
def test_a_break_outside_the_range_stops_the_export_too(
    missive: Run, db_path: Path, raw: sqlite3.Connection, edited: int, bounds: list[str]
) -> None:
    """Decision: the whole trail is walked; a break anywhere means the trail is no
    longer evidence, and records after the break are not tied to the head any more."""
    raw.execute("UPDATE audit_log SET peer = '10.6.6.6:25' WHERE seq = ?", (edited,))
    status, out, err = _export(missive, db_path, "--format", "jsonl", *bounds)
    assert (status, out) == (1, "")
    assert err.startswith(f"BROKEN at seq {edited}: hash mismatch (record edited)\n")


def test_a_deleted_record_leaves_no_output_file(
    missive: Run, db_path: Path, raw: sqlite3.Connection, tmp_path: Path
) -> None:
    raw.execute("DELETE FROM audit_log WHERE seq = 6")
    target = tmp_path / "export.csv"
    status, out, err = _export(missive, db_path, "--format", "csv", "--output", target)
    assert (status, out) == (1, "")
    assert err.startswith(
        "BROKEN at seq 6: record missing (deleted); the next one present is seq 7"
    )
    assert not target.exists()


# -- --allow-broken: written, and the file says so --------------------------------------


def test_allow_broken_jsonl_opens_with_a_notice_that_is_not_a_record(
    missive: Run, db_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute(EDIT_SEQ_4)
    status, out, err = _export(missive, db_path, "--format", "jsonl", "--allow-broken")
    assert status == 1
    notice, *records = (json.loads(line) for line in out.splitlines())
    assert "seq" not in notice and "hash" not in notice
    assert notice["unverified_export"].startswith(
        "UNVERIFIED EXPORT: the audit chain does not verify (BROKEN at seq 4: hash mismatch"
    )
    assert (notice["broken_at_seq"], notice["verified_records"]) == (4, 3)
    assert (notice["reason"], notice["unreadable_seqs"]) == ("hash mismatch (record edited)", [])
    assert [record["seq"] for record in records] == list(range(1, 11))  # past the break too
    assert records[3]["rcpt_to"] == ["x@evil.test"]  # as found
    assert err.splitlines() == [
        "BROKEN at seq 4: hash mismatch (record edited)",
        "3 records before it verified",
        "exported anyway (--allow-broken): 10 records, opened by an UNVERIFIED EXPORT line",
    ]


def test_allow_broken_csv_file_opens_with_a_one_cell_notice_row(
    missive: Run, db_path: Path, raw: sqlite3.Connection, tmp_path: Path
) -> None:
    raw.execute("DELETE FROM audit_log WHERE seq = 6")
    target = tmp_path / "export.csv"
    status, _, _ = _export(
        missive, db_path, "--format", "csv", "--output", target, "--allow-broken",
        "--since", "2026-01-01T12:00",
    )  # fmt: skip
    assert status == 1
    with target.open(newline="", encoding="utf-8") as stream:
        notice, header, *rows = csv.reader(stream)
    assert notice == [
        "UNVERIFIED EXPORT: the audit chain does not verify (BROKEN at seq 6: record missing "
        "(deleted); the next one present is seq 7; 5 records before it verified); the "
        "records below are exported as found"
    ]
    assert header == list(COLUMNS)
    assert [row[0] for row in rows] == ["5", "7", "8", "9", "10"]


def test_allow_broken_lists_the_rows_it_could_not_decode(
    missive: Run, db_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE audit_log SET details = 'oops' WHERE seq = 3")
    raw.execute(EDIT_SEQ_4)
    status, out, _ = _export(missive, db_path, "--format", "jsonl", "--allow-broken")
    notice, *records = (json.loads(line) for line in out.splitlines())
    assert status == 1
    assert (notice["broken_at_seq"], notice["unreadable_seqs"]) == (3, [3])
    assert notice["unverified_export"].endswith("; unreadable records left out: seq 3")
    assert [record["seq"] for record in records] == [1, 2, 4, 5, 6, 7, 8, 9, 10]


# -- a sound export is unchanged --------------------------------------------------------

GOLDEN_JSONL = (
    '{"seq": 1, "time": "2026-01-01T08:00:00.000000Z", "type": "smtp.accepted", '
    '"queue_id": "Q000000", "message_id": "<0.msg@chu-a.test>", '
    '"mail_from": "alice.martin@chu-a.test", '
    '"rcpt_to": ["bob.durand@clinique-b.test", "r0@clinique-b.test"], '
    '"actor": "alice.martin@chu-a.test", "peer": "127.0.0.1:41234", '
    '"cert_serials": ["3f:1a"], "algorithms": ["aes-256-gcm", "rsa-oaep"], '
    '"outcome": "accepted", "sha256": "' + "0" * 64 + '", '
    '"details": {"listener": "submission", "size": "1000"}, "prev_hash": "' + "0" * 64 + '", '
    '"hash": "21c7ff805fb7137d0627aecf0e36201a609618513b33df8a7263cc3160b4912e"}\n'
    '{"seq": 2, "time": "2026-01-01T08:00:00.000000Z", "type": "smtp.rejected", '
    '"queue_id": null, "message_id": null, "mail_from": null, "rcpt_to": [], "actor": null, '
    '"peer": "=cmd\\u202e|x", "cert_serials": [], "algorithms": [], "outcome": null, '
    '"sha256": null, "details": {"why": "a,\\"b\\"\\nc"}, '
    '"prev_hash": "21c7ff805fb7137d0627aecf0e36201a609618513b33df8a7263cc3160b4912e", '
    '"hash": "a27ac2c3c945275e65a9a862058cbe8549f81ffd2577f76d50db2c53c1e05052"}\n'
)
GOLDEN_CSV = (
    ",".join(COLUMNS) + "\r\n"
    "1,2026-01-01T08:00:00.000000Z,smtp.accepted,Q000000,<0.msg@chu-a.test>,"
    'alice.martin@chu-a.test,"[""bob.durand@clinique-b.test"",""r0@clinique-b.test""]",'
    'alice.martin@chu-a.test,127.0.0.1:41234,"[""3f:1a""]","[""aes-256-gcm"",""rsa-oaep""]",'
    'accepted,' + "0" * 64 + ',"{""listener"":""submission"",""size"":""1000""}",'
    + "0" * 64 + ",21c7ff805fb7137d0627aecf0e36201a609618513b33df8a7263cc3160b4912e\r\n"
    "2,2026-01-01T08:00:00.000000Z,smtp.rejected,,,,[],,'=cmd\\u202e|x,[],[],,,"
    '"{""why"":""a,\\""b\\""\\nc""}",'
    "21c7ff805fb7137d0627aecf0e36201a609618513b33df8a7263cc3160b4912e,"
    "a27ac2c3c945275e65a9a862058cbe8549f81ffd2577f76d50db2c53c1e05052\r\n"
)  # fmt: skip


@pytest.mark.parametrize(
    ("export_format", "golden"), [("jsonl", GOLDEN_JSONL), ("csv", GOLDEN_CSV)]
)
@pytest.mark.parametrize("extra", [[], ["--allow-broken"]])
def test_a_sound_export_is_byte_for_byte_the_old_one(
    missive: Run, tmp_path: Path, export_format: str, golden: str, extra: list[str]
) -> None:
    """The golden text was written by the export of session 5 (before verification)."""
    path = tmp_path / "audit.sqlite"
    odd = AuditEvent("smtp.rejected", time=T0, peer="=cmd\u202e|x", details={"why": 'a,"b"\nc'})
    with AuditStore.open_writer(path) as trail:
        trail.append([make_event(0), odd])
    status, out, err = _export(missive, path, "--format", export_format, *extra)
    assert (status, out, err) == (0, golden, "")
    target = tmp_path / f"export.{export_format}"
    status, _, _ = _export(missive, path, "--format", export_format, "--output", target, *extra)
    assert status == 0
    assert target.read_bytes() == golden.encode("utf-8")


# -- the range: the rows the indexed query chooses --------------------------------------

STEPPED_BACK_HOURS = [0, 5, 1, 3, 3, 2, 9, 4]  # the clock stepped back twice


@pytest.mark.parametrize(
    ("since", "until"),
    [(None, None), (1, None), (None, 3), (3, 4), (2, 5), (3, 3.5), (9, None), (10, None)],
)
def test_the_range_selects_what_the_indexed_query_selects(
    missive: Run, tmp_path: Path, since: float | None, until: float | None
) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditStore.open_writer(path) as trail:
        trail.append(
            [
                make_event(index, time=T0 + timedelta(hours=hours))
                for index, hours in enumerate(STEPPED_BACK_HOURS)
            ]
        )
        low = None if since is None else T0 + timedelta(hours=since)
        high = None if until is None else T0 + timedelta(hours=until)
        expected = [record.seq for record in trail.iter_records(since=low, until=high)]
    bounds: list[str] = []
    if low is not None:
        bounds += ["--since", low.isoformat()]
    if high is not None:
        bounds += ["--until", high.isoformat()]
    status, out, _ = _export(missive, path, "--format", "jsonl", *bounds)
    assert status == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == expected


# -- pruned trails and anchors ----------------------------------------------------------


def test_a_pruned_trail_exports_and_says_what_is_gone(
    missive: Run, db_path: Path, store: AuditStore
) -> None:
    store.prune(T0 + timedelta(hours=3), actor="cli:test")  # seq 1..3 gone, checkpoint 11
    status, out, err = _export(missive, db_path, "--format", "jsonl", "--since", "2026-01-01")
    assert status == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == list(range(4, 12))
    assert err == (
        "note: the trail was pruned: records before seq 4 (older than "
        "2026-01-01T11:00:00.000000Z) are no longer in it, nor in this export\n"
    )
    status, out, err = _export(missive, db_path, "--format", "jsonl", "--since", "2026-01-01T11:00")
    assert (status, err) == (0, "")  # nothing of that range was pruned
    assert json.loads(out.splitlines()[0])["seq"] == 4


def test_records_deleted_by_hand_after_a_prune_stop_the_export(
    missive: Run, db_path: Path, store: AuditStore, raw: sqlite3.Connection
) -> None:
    store.prune(T0 + timedelta(hours=3), actor="cli:test")
    raw.execute("DELETE FROM audit_log WHERE seq = 4")
    status, out, err = _export(missive, db_path, "--format", "jsonl", "--since", "2026-01-01T12")
    assert (status, out) == (1, "")
    assert err.startswith(
        "BROKEN at seq 5: records before seq 5 are missing: the latest checkpoint accounts "
        "for seq 1..3 only (deleted)\n"
    )


def test_an_anchor_detects_a_truncated_trail_that_verifies_on_its_own(
    missive: Run, db_path: Path, store: AuditStore, raw: sqlite3.Connection
) -> None:
    head = store.head()
    assert head is not None
    anchor = f"{head.seq}:{head.hash}"
    status, _, err = _export(missive, db_path, "--format", "csv", "--anchor", anchor)
    assert (status, err) == (0, "anchor matches\n")
    raw.execute("DELETE FROM audit_log WHERE seq = 10")
    assert _export(missive, db_path, "--format", "csv")[0] == 0  # a chain alone cannot tell
    status, out, err = _export(missive, db_path, "--format", "csv", "--anchor", anchor)
    assert (status, out) == (1, "")
    assert err.startswith("BROKEN at seq 10: records after seq 9 are missing")


def test_a_malformed_anchor_is_a_usage_error(
    missive: Run, db_path: Path, store: AuditStore
) -> None:
    status, out, err = _export(missive, db_path, "--format", "csv", "--anchor", "10:abc")
    assert (status, out) == (2, "")
    assert err.startswith("--anchor: expected SEQ:HASH")


# -- export_verified on its own ---------------------------------------------------------


def test_an_unreadable_row_in_the_range_is_an_error_outside_it_a_break(
    store: AuditStore, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE audit_log SET details = 'oops' WHERE seq = 3")
    with pytest.raises(RecordFormatError) as raised:
        export_verified(store.iter_rows(), io.StringIO(), "jsonl")
    assert raised.value.seq == 3
    later = TimeRange(since=T0 + timedelta(hours=5))
    outcome = export_verified(store.iter_rows(), io.StringIO(), "jsonl", window=later)
    assert outcome.report.problem is not None and outcome.report.problem.seq == 3
    assert not outcome.verified


def test_export_verified_reads_its_rows_once(store: AuditStore) -> None:
    """One pass over one SELECT (one read snapshot): verified is what is written."""
    rows = iter(list(store.iter_rows()))  # a one-shot iterator: a second pass sees nothing
    out = io.StringIO()
    outcome = export_verified(rows, out, "jsonl", window=TimeRange(since=T0))
    assert outcome.verified and (outcome.exported, outcome.report.records) == (10, 10)
    assert len(out.getvalue().splitlines()) == 10
