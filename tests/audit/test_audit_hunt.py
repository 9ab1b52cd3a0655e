"""Adversarial hunt on the audit trail and its exports (session 5, H13).

Each test attacks one promise of ``gateway.audit`` (module docstrings, docs/security.md,
docs/operations.md): tamper evidence, "events carry no content", exports an auditor
can open (in a spreadsheet or a terminal too), retention that keeps the evidence.
The values a hostile peer controls (an EHLO name, an address, a reason) carry control,
bidi and line-separator characters that the event layer accepts on purpose.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings

from gateway.audit import Anchor, AuditEvent, AuditStore
from gateway.audit.chain import Checkpoint
from gateway.audit.event import utc_now
from gateway.audit.export import record_document, write_csv, write_jsonl
from gateway.audit.record import COLUMNS, GENESIS_HASH, seal, seal_row
from gateway.config.quantities import parse_duration
from gateway.config.value_errors import BadValue
from tests.cli_runner import Run

from .events import T0, any_event

# what a hostile peer can put in an EHLO name, an address or a reason text
ESCAPES = "\x1b]0;owned\x07\x1b[2J"  # terminal: set the title, clear the screen
FORGED_ROW = "refused\r\n99,2026-01-01T00:00:00.000000Z,smtp.accepted"  # a fake row
RLO_ADDRESS = "\u202eexe.live@moc"  # shows as "com@evil.exe"
LINE_BREAKS = "a\u2028b\u2029c\x85d"  # str.splitlines() breaks at each of them

_INSERT = (
    "INSERT INTO audit_log (seq, time, type, queue_id, message_id, mail_from, rcpt_to, "
    "actor, peer, cert_serials, algorithms, outcome, sha256, details, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _hostile_event(hours: int) -> AuditEvent:
    return AuditEvent(
        "smtp.rejected",
        time=T0 + timedelta(hours=hours),
        peer=ESCAPES,
        mail_from=RLO_ADDRESS,
        outcome=FORGED_ROW,
        actor="nul\x00byte\x7f",
        rcpt_to=(RLO_ADDRESS,),
        details={"reason": LINE_BREAKS},
    )


def _csv_text(store: AuditStore) -> str:
    out = io.StringIO(newline="")
    write_csv(store.iter_records(), out)
    return out.getvalue()


def _jsonl_text(store: AuditStore) -> str:
    out = io.StringIO(newline="")
    write_jsonl(store.iter_records(), out)
    return out.getvalue()


def _unprintable(text: str) -> list[str]:
    return sorted({char for char in text if not char.isprintable()})


# -- CSV: what the auditor opens in a spreadsheet, a pager or a terminal --------------


def test_csv_cells_show_control_characters_instead_of_obeying_them(store: AuditStore) -> None:
    """ESC/BEL run in the terminal of whoever exports to stdout, NUL truncates cells,
    and a CR LF inside a cell lets a peer forge what a line-based view shows as a row."""
    store.append([_hostile_event(30)])
    text = _csv_text(store)
    body = text.replace("\r\n", "\n")
    assert _unprintable(body) == ["\n"], "raw control characters reach the CSV"
    assert len(body.splitlines()) == 1 + 11  # the header and one line per record


def test_csv_cells_show_bidi_controls_instead_of_obeying_them(store: AuditStore) -> None:
    """U+202E makes ``\\u202eexe.live@moc`` display as ``com@evil.exe``, in its cell and
    in the rest of the line in a pager (Trojan Source, CVE-2021-42574)."""
    store.append([_hostile_event(30)])
    rows = list(csv.DictReader(io.StringIO(_csv_text(store), newline="")))
    assert rows[-1]["mail_from"] == "\\u202eexe.live@moc"
    assert json.loads(rows[-1]["rcpt_to"]) == [RLO_ADDRESS]  # JSON cells stay JSON
    assert "\u202e" not in rows[-1]["rcpt_to"]


def test_csv_formula_starts_stay_defused_once_controls_are_escaped(store: AuditStore) -> None:
    store.append(
        [
            AuditEvent(
                "smtp.rejected",
                time=T0 + timedelta(hours=30),
                peer="\t=1+1",
                outcome="\r=cmd|' /C calc'!A0",
                actor='=HYPERLINK("http://evil.test")',
                mail_from="-2+3@x",
            )
        ]
    )
    rows = list(csv.DictReader(io.StringIO(_csv_text(store), newline="")))
    last = rows[-1]
    cells = [last[name] for name in ("peer", "outcome", "actor", "mail_from")]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert last["actor"] == '\'=HYPERLINK("http://evil.test")'  # held: OWASP prefix


# -- JSON Lines: exact, and one record per line for every line splitter ----------------


def test_jsonl_is_one_record_per_line_for_every_line_splitter(store: AuditStore) -> None:
    """U+2028, U+2029 and U+0085 are legal raw in JSON but ``str.splitlines()`` (and
    so this project's own tests, and many auditor scripts) break a record there."""
    store.append([_hostile_event(30)])
    text = _jsonl_text(store)
    lines = text.splitlines()
    assert len(lines) == 11
    last = json.loads(lines[-1])
    assert last["details"] == {"reason": LINE_BREAKS}  # still exact once escaped
    assert last["mail_from"] == RLO_ADDRESS


def test_jsonl_shows_no_raw_bidi_or_c1_controls(store: AuditStore) -> None:
    """JSON escapes C0 controls itself, not C1 (U+009B is CSI in some terminals) nor
    bidi overrides: an operator running ``export --format jsonl`` in a terminal."""
    store.append(
        [AuditEvent("smtp.rejected", time=T0 + timedelta(hours=30), peer="\x9b2J" + RLO_ADDRESS)]
    )
    text = _jsonl_text(store)
    assert _unprintable(text) == ["\n"]
    assert json.loads(text.splitlines()[-1])["peer"] == "\x9b2J" + RLO_ADDRESS


@settings(deadline=None, database=None)
@given(event=any_event)
def test_escaped_exports_stay_exact_and_printable(event: AuditEvent) -> None:
    """Held after the fix: JSONL parses back to the very record, JSON cells too, and
    neither format writes a non-printable character (one record per line)."""
    record = seal(1, event, GENESIS_HASH)
    jsonl, table = io.StringIO(newline=""), io.StringIO(newline="")
    write_jsonl([record], jsonl)
    write_csv([record], table)
    assert json.loads(jsonl.getvalue()) == record_document(record)
    assert _unprintable(jsonl.getvalue()) == ["\n"]
    assert _unprintable(table.getvalue().replace("\r\n", "\n")) == ["\n"]
    [row] = list(csv.DictReader(io.StringIO(table.getvalue(), newline="")))
    assert json.loads(row["details"]) == dict(event.details)
    assert json.loads(row["rcpt_to"]) == list(event.rcpt_to)


def test_jsonl_to_stdout_is_utf8_whatever_the_terminal_encoding(
    db_path: Path, store: AuditStore
) -> None:
    """RFC 8259 §8.1: JSON exchanged between systems is UTF-8. With a Latin-1 or ASCII
    stdout (a legacy locale, PYTHONIOENCODING) the export crashes with a traceback."""
    store.append([AuditEvent("smtp.accepted", time=T0 + timedelta(hours=30), peer="Hôpital 東")])
    environment = {**os.environ, "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "gateway.cli", "audit", "export", "--db", str(db_path)]
    done = subprocess.run(
        [*command, "--format", "jsonl"], capture_output=True, env=environment, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, b"")
    lines = done.stdout.decode("utf-8").splitlines()
    assert json.loads(lines[-1])["peer"] == "Hôpital 東"


# -- --output: a new file, complete or absent -------------------------------------------


def test_a_failed_export_leaves_no_partial_file(
    missive: Run, db_path: Path, raw: sqlite3.Connection, tmp_path: Path
) -> None:
    """A CSV has no end marker: three rows out of ten look like a complete export."""
    raw.execute("UPDATE audit_log SET details = 'oops' WHERE seq = 4")
    target = tmp_path / "export.csv"
    status, _, err = missive(
        "audit", "export", "--db", db_path, "--format", "csv", "--output", target
    )
    assert status == 1 and err.startswith("record seq 4 is unreadable")
    assert not target.exists(), f"partial export left behind: {target.read_text()[:200]!r}"


def test_export_never_writes_through_a_symlink(
    missive: Run, db_path: Path, store: AuditStore, tmp_path: Path
) -> None:
    """Held: O_EXCL refuses an existing name, a dangling symlink included."""
    victim = tmp_path / "victim"
    link = tmp_path / "export.csv"
    link.symlink_to(victim)
    status, _, err = missive(
        "audit", "export", "--db", db_path, "--format", "csv", "--output", link
    )
    assert status == 2 and "already exists" in err
    assert not victim.exists()


# -- prune: retention must not become "delete everything" -----------------------------


def test_prune_refuses_a_cutoff_in_the_future(missive: Run, db_path: Path) -> None:
    """A typo (2062 for 2026) or a wrong offset would delete the records the gateway is
    writing right now, the evidence of today's traffic, and report success."""
    now = utc_now()
    with AuditStore.open_writer(db_path) as trail:
        trail.append([AuditEvent("smtp.accepted", time=now - timedelta(minutes=1))])
    tomorrow = (now + timedelta(days=1)).isoformat()
    status, out, err = missive("audit", "prune", "--db", db_path, "--before", tomorrow)
    assert (status, out) == (2, ""), out
    assert err.startswith("--before:")
    with AuditStore.open_reader(db_path) as reader:
        assert reader.verify().records == 1


def test_a_retention_too_long_for_a_date_is_a_configuration_error() -> None:
    """``retention = "800000d"`` was accepted; ``now - retention`` then overflowed
    (``OverflowError`` from ``missive audit prune`` and from ``serve`` at start,
    ``gateway.app.apply_audit_retention``). Every duration is now at most 100 years."""
    with pytest.raises(BadValue, match="too large"):
        parse_duration("800000d")
    assert parse_duration("36500d") == timedelta(days=36_500)


# -- verify: always an answer, never a traceback ----------------------------------------


def test_verify_names_a_record_holding_invalid_utf8(
    missive: Run, db_path: Path, raw: sqlite3.Connection
) -> None:
    """SQLite stores what it is given: bytes that are not UTF-8 end the walk with
    ``sqlite3.OperationalError: Could not decode to UTF-8`` (a traceback, exit 1)."""
    raw.execute("UPDATE audit_log SET peer = CAST(X'FF41' AS TEXT) WHERE seq = 4")
    status, out, _ = missive("audit", "verify", "--db", db_path)
    assert status == 1
    assert out.startswith("BROKEN at seq 4: record unreadable")


def test_export_of_a_record_holding_invalid_utf8_is_exit_1(
    missive: Run, db_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE audit_log SET peer = CAST(X'C3' AS TEXT) WHERE seq = 4")
    status, _, err = missive("audit", "export", "--db", db_path, "--format", "jsonl")
    assert status == 1 and err.startswith("record seq 4 is unreadable")


def test_verify_of_a_damaged_database_file_is_a_clear_answer(
    missive: Run, db_path: Path, store: AuditStore, raw: sqlite3.Connection
) -> None:
    """Garbage over the table's root page: ``sqlite3.DatabaseError: database disk image
    is malformed`` escapes as a traceback instead of a negative answer."""
    store.close()
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    root = raw.execute("SELECT rootpage FROM sqlite_master WHERE name = 'audit_log'").fetchone()
    page_size = raw.execute("PRAGMA page_size").fetchone()[0]
    raw.close()
    with db_path.open("r+b") as database:
        database.seek((root[0] - 1) * page_size)
        database.write(b"\xff" * 16)
    status, out, err = missive("audit", "verify", "--db", db_path)
    assert status in (1, 2)
    assert "malformed" in out + err or "damaged" in out + err


def test_an_edited_wal_frame_is_found_like_any_edit(db_path: Path, store: AuditStore) -> None:
    """Held: readers use the writer's WAL index, so an edit in ``-wal`` is an edit."""
    store.append([AuditEvent("smtp.accepted", time=T0 + timedelta(hours=30), queue_id="QWAL1")])
    wal = Path(f"{db_path}-wal")
    data = wal.read_bytes()
    where = data.rfind(b"QWAL1")
    assert where > 0  # still in the WAL: the writer has not checkpointed it
    wal.write_bytes(data[:where] + b"QWAL9" + data[where + 5 :])
    with AuditStore.open_reader(db_path) as reader:
        report = reader.verify()
    assert report.problem is not None and report.problem.seq == 11


# -- tamper evidence with an anchor -----------------------------------------------------


def test_an_anchor_matched_only_by_a_checkpoint_is_reported_as_such(
    db_path: Path, store: AuditStore, raw: sqlite3.Connection
) -> None:
    """The operator noted the head (seq 10). Deleting every record and appending one
    checkpoint that "accounts" for them needs no rehash of anything: appending is free
    for anyone who can write the file. Verify said OK and "anchor matches", although
    every record the anchor vouched for is gone; it now says the anchor was matched
    only by a checkpoint (and ``missive audit verify`` prints a note saying so)."""
    head = store.head()
    assert head is not None
    raw.execute("DELETE FROM audit_log")
    checkpoint = Checkpoint.build(datetime(2025, 6, 1, tzinfo=UTC), 1, head, 10)
    forged = AuditEvent(
        "audit.checkpoint",
        time=T0 + timedelta(hours=30),
        actor="cli:root",
        outcome="pruned",
        details=checkpoint.details(),
    )
    raw.execute(_INSERT, seal_row(11, forged, head.hash))
    with AuditStore.open_reader(db_path) as reader:
        report = reader.verify(Anchor(head.seq, head.hash))
    # A design limit (gateway.audit.chain docstring): an unkeyed chain cannot tell this
    # checkpoint from a real prune. What verify must not do is vouch for the anchored
    # history as if it had seen it: it says the anchor was matched by a checkpoint.
    assert report.ok and report.anchor_checked is True
    assert report.anchor_by_checkpoint


def test_columns_are_what_the_hunt_assumes() -> None:
    """Guard for the raw INSERT above (the table's column order)."""
    assert _INSERT.count("?") == len(COLUMNS)
