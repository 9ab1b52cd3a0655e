"""Exporting the trail for auditors: JSON Lines (exact) or CSV (for spreadsheets).

Role: turn decoded records into text on a stream, and (``export_verified``) walk the
stored rows once, verifying the hash chain while it writes the records of the chosen
time range. Both formats carry every field plus ``prev_hash`` and ``hash``, one
record per line/row, in ``seq`` order.

- ``jsonl``: one JSON object per line (RFC 8259, UTF-8), tuples as arrays, ``details``
  as an object, absent values as ``null``. It is exact: an auditor can recompute each
  hash from it (see ``gateway.audit.record``: drop ``prev_hash`` and ``hash``, add
  ``"v": 1``, canonicalise, SHA-256 over the previous hash then those bytes).
- ``csv``: RFC 4180 (CRLF line ends, a header row); tuple and ``details`` cells hold
  the same JSON text, absent values are empty cells. Security: values come from
  peers (addresses, EHLO names), so a cell that a spreadsheet would run as a formula
  (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) is prefixed with ``'`` (the
  OWASP rule against CSV injection, CWE-1236). The CSV is therefore for reading, the
  JSONL for recomputing hashes.

Both formats show every non-printable character (``str.isprintable``: C0 and C1
controls, DEL, bidi overrides and isolates, zero-width and other format characters,
U+2028/U+2029, spaces other than U+0020) as a JSON ``\\uXXXX`` escape instead of
writing it raw: an export read in a terminal or a pager must not run a peer's escape
sequences (CWE-150), a bidi override must not make ``\\u202eexe.live@moc`` display as
``com@evil.exe`` (CVE-2021-42574), and a CR LF, U+2028 or U+0085 must not forge what
a line-based reader (``str.splitlines``, ``grep``) takes for another record (CWE-117).
In JSONL and in JSON cells that is a standard JSON escape of the same value (still
exact); in a plain CSV cell it is a visible notation (reading only, like the ``'``).

Verified export (decision, session 6): an export of a tampered trail must not look
like an export of a sound one, so ``export_verified`` feeds every stored row, from the
first retained record to the head, to ``gateway.audit.chain.verify_rows`` (the walk
``missive audit verify`` does, checkpoints and an optional ``Anchor`` included) and
writes the rows with ``since <= time < until`` as they pass. Invariants:

- One pass over one ``SELECT`` (one SQLite read snapshot): what is exported is
  exactly what was verified, even while the gateway appends or someone edits the file
  between two reads. The whole trail is walked even for a short range: a record's
  hash vouches for it only through the chain up to the head, and a break anywhere
  (before the range included) means the trail as a whole is not evidence any more.
  The range test compares the stored time text as the store's indexed query does
  (fixed-width UTC text, so text order is time order), so the rows chosen are the
  same; a record whose clock stepped back is exported where its ``seq`` puts it.
- A sound export is byte-for-byte what it was before this decision (no marker, no
  extra field): tests and users parse it.
- The caller decides what a break means (``missive audit export`` writes nothing and
  exits 1); with ``keep_going`` the walk goes on past the break, writes the remaining
  rows of the range as found, skips (and lists) in-range rows that cannot be decoded,
  and ``unverified_notice`` gives the line to put *first* in the file, so that the
  file itself says it is not vouched for and where the chain broke. That line is not
  a record (no ``seq``): a reader that expects records fails on it instead of taking
  it for evidence.

Written by hand: no library exports a hash-chained trail; ``csv`` and ``json`` do the
formats. No content is ever exported because none is ever recorded (see
``gateway.audit.event``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, TextIO

from gateway.audit.chain import Anchor, VerifyReport, verify_rows
from gateway.audit.event import format_time
from gateway.audit.record import (
    COLUMNS,
    AuditRecord,
    JsonValue,
    RecordFormatError,
    Row,
    event_fields,
    record_from_row,
)
from gateway.printable import shown

ExportFormat = Literal["csv", "jsonl"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "jsonl")
UNVERIFIED_MARK = "UNVERIFIED EXPORT"

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class TextSink(Protocol):
    """Where an export is written: a text stream, or any object with its ``write``."""

    def write(self, text: str, /) -> int: ...


def record_document(record: AuditRecord) -> dict[str, JsonValue]:
    """The record as one JSON object, keys in column order."""
    return {
        "seq": record.seq,
        **event_fields(record.event),
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }


def _csv_cell(value: JsonValue) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | dict):
        return shown(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
    value = shown(value)
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


class RecordWriter(Protocol):
    """Writes records one at a time in one export format."""

    def write(self, record: AuditRecord) -> None: ...


class JsonlWriter:
    """One JSON object per line."""

    def __init__(self, out: TextSink) -> None:
        self._out = out

    def write(self, record: AuditRecord) -> None:
        self._out.write(shown(json.dumps(record_document(record), ensure_ascii=False)) + "\n")


class CsvWriter:
    """A header row (written at once) then one row per record."""

    def __init__(self, out: TextSink) -> None:
        self._writer = csv.writer(out, lineterminator="\r\n")
        self._writer.writerow(COLUMNS)

    def write(self, record: AuditRecord) -> None:
        document = record_document(record)
        self._writer.writerow([_csv_cell(document[column]) for column in COLUMNS])


def record_writer(out: TextSink, export_format: ExportFormat) -> RecordWriter:
    """A writer of ``export_format`` on ``out`` (the CSV header is written now)."""
    if export_format == "csv":
        return CsvWriter(out)
    return JsonlWriter(out)


def _write_all(records: Iterable[AuditRecord], writer: RecordWriter) -> int:
    count = 0
    for record in records:
        writer.write(record)
        count += 1
    return count


def write_jsonl(records: Iterable[AuditRecord], out: TextIO) -> int:
    """Write one JSON object per line; returns the number of records written."""
    return _write_all(records, JsonlWriter(out))


def write_csv(records: Iterable[AuditRecord], out: TextIO) -> int:
    """Write a header row then one row per record; returns the number of records."""
    return _write_all(records, CsvWriter(out))


def write_export(records: Iterable[AuditRecord], out: TextIO, export_format: ExportFormat) -> int:
    """Write ``records`` to ``out`` in ``export_format``; returns the count (unverified:
    ``export_verified`` is what the CLI uses)."""
    return _write_all(records, record_writer(out, export_format))


# -- verified export -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeRange:
    """``since <= time < until``, either bound optional, compared as the trail's time
    text (the comparison the store's indexed query makes)."""

    since: datetime | None = None
    until: datetime | None = None

    def texts(self) -> tuple[str, str | None]:
        """The bounds as trail time text (``""`` is below every time)."""
        low = "" if self.since is None else format_time(self.since)
        return low, None if self.until is None else format_time(self.until)


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    """What ``export_verified`` found and wrote."""

    report: VerifyReport  # the chain walk, as ``missive audit verify`` reports it
    exported: int  # records written
    unreadable: tuple[int, ...] = ()  # in-range rows skipped (``keep_going`` only)

    @property
    def verified(self) -> bool:
        return self.report.ok


@dataclass
class _Selection:
    """Taps the rows on their way to the verifier: writes those in the time range."""

    writer: RecordWriter
    low: str
    high: str | None
    keep_going: bool
    exported: int = 0
    unreadable: list[int] = field(default_factory=list)

    def take(self, row: Row) -> None:
        if not self._in_range(row.time):
            return
        try:
            record = record_from_row(row)
        except RecordFormatError:
            if not self.keep_going:
                raise
            self.unreadable.append(row.seq)
            return
        self.writer.write(record)
        self.exported += 1

    def _in_range(self, time: object) -> bool:
        if not isinstance(time, str):  # bytes that are not UTF-8: let the decoder name it
            return True
        return self.low <= time and (self.high is None or time < self.high)

    def tap(self, rows: Iterator[Row]) -> Iterator[Row]:
        for row in rows:
            self.take(row)
            yield row


def export_verified(
    rows: Iterable[Row],
    out: TextSink,
    export_format: ExportFormat,
    *,
    window: TimeRange = TimeRange(),
    anchor: Anchor | None = None,
    keep_going: bool = False,
) -> ExportOutcome:
    """Verify the chain over ``rows`` (the whole trail, ``seq`` order) while writing
    the records in ``window`` to ``out``; see the module docstring.

    On a break the walk stops (what was written is the caller's to discard) unless
    ``keep_going``. ``RecordFormatError`` for an undecodable row in the window unless
    ``keep_going`` (then it is skipped and listed in ``unreadable``)."""
    low, high = window.texts()
    selection = _Selection(record_writer(out, export_format), low, high, keep_going)
    remaining = iter(rows)
    report = verify_rows(selection.tap(remaining), anchor)
    if report.problem is not None and keep_going:
        for row in remaining:  # past the break: exported as found, vouched for by nothing
            selection.take(row)
    return ExportOutcome(report, selection.exported, tuple(selection.unreadable))


def unverified_notice(outcome: ExportOutcome, export_format: ExportFormat) -> str:
    """The line that opens an export written although the chain does not verify: a
    JSON object that is not a record (``jsonl``) or a one-cell row (``csv``)."""
    problem = outcome.report.problem
    if problem is None:
        raise ValueError("the chain verified: a sound export carries no notice")
    summary = _notice_summary(str(problem), outcome.report.records, outcome.unreadable)
    if export_format == "csv":
        row = io.StringIO()
        csv.writer(row, lineterminator="\r\n").writerow([_csv_cell(summary)])
        return row.getvalue()
    document = {
        "unverified_export": summary,
        "broken_at_seq": problem.seq,
        "reason": problem.reason,
        "verified_records": outcome.report.records,
        "unreadable_seqs": list(outcome.unreadable),
    }
    return shown(json.dumps(document, ensure_ascii=False)) + "\n"


def _notice_summary(problem: str, verified: int, unreadable: Sequence[int]) -> str:
    text = (
        f"{UNVERIFIED_MARK}: the audit chain does not verify ({problem}; {verified} records "
        "before it verified); the records below are exported as found"
    )
    if unreadable:
        text += "; unreadable records left out: seq " + ", ".join(map(str, unreadable))
    return text
