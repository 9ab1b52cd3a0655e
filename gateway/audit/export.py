"""Exporting the trail for auditors: JSON Lines (exact) or CSV (for spreadsheets).

Role: turn decoded records into text on a stream. Both formats carry every field plus
``prev_hash`` and ``hash``, one record per line/row, in ``seq`` order.

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

No content is ever exported because none is ever recorded (see ``gateway.audit.event``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Literal, TextIO

from gateway.audit.record import COLUMNS, AuditRecord, JsonValue, event_fields
from gateway.printable import shown

ExportFormat = Literal["csv", "jsonl"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "jsonl")

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


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


def write_jsonl(records: Iterable[AuditRecord], out: TextIO) -> int:
    """Write one JSON object per line; returns the number of records written."""
    count = 0
    for record in records:
        out.write(shown(json.dumps(record_document(record), ensure_ascii=False)) + "\n")
        count += 1
    return count


def write_csv(records: Iterable[AuditRecord], out: TextIO) -> int:
    """Write a header row then one row per record; returns the number of records."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    count = 0
    for record in records:
        document = record_document(record)
        writer.writerow([_csv_cell(document[column]) for column in COLUMNS])
        count += 1
    return count


def write_export(records: Iterable[AuditRecord], out: TextIO, export_format: ExportFormat) -> int:
    """Write ``records`` to ``out`` in ``export_format``; returns the count."""
    if export_format == "csv":
        return write_csv(records, out)
    return write_jsonl(records, out)
