"""Export: JSONL is exact (hashes recomputable from it alone), CSV is safe to open."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import timedelta

from gateway.audit import AuditEvent, AuditStore
from gateway.audit.export import record_document, write_csv, write_jsonl
from gateway.audit.record import COLUMNS

from .events import T0


def _jsonl(store: AuditStore, **bounds: object) -> list[dict[str, object]]:
    out = io.StringIO()
    write_jsonl(store.iter_records(**bounds), out)  # type: ignore[arg-type]
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_jsonl_parses_back_to_the_stored_records(store: AuditStore) -> None:
    exported = _jsonl(store)
    assert exported == [record_document(record) for record in store.iter_records()]
    assert [line["seq"] for line in exported] == list(range(1, 11))
    assert list(exported[0]) == list(COLUMNS)
    assert exported[3]["rcpt_to"] == ["bob.durand@clinique-b.test", "r3@clinique-b.test"]
    assert exported[3]["details"] == {"listener": "submission", "size": "1003"}


def test_an_auditor_recomputes_every_hash_from_jsonl_alone(store: AuditStore) -> None:
    """The recipe of the ``record`` docstring, with nothing but json and hashlib."""
    prev_hash = "0" * 64
    for line in _jsonl(store):
        claimed_prev, claimed = line.pop("prev_hash"), line.pop("hash")
        canonical = json.dumps(
            {**line, "v": 1}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        assert claimed_prev == prev_hash
        prev_hash = hashlib.sha256(bytes.fromhex(claimed_prev) + canonical).hexdigest()
        assert claimed == prev_hash


def test_since_is_inclusive_and_until_exclusive(store: AuditStore) -> None:
    exported = _jsonl(store, since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=5))
    assert [line["seq"] for line in exported] == [3, 4, 5]
    assert [line["seq"] for line in _jsonl(store, since=T0 + timedelta(hours=8))] == [9, 10]
    assert [line["seq"] for line in _jsonl(store, until=T0 + timedelta(hours=1))] == [1]


def test_csv_parses_back_with_json_cells_and_empty_nulls(store: AuditStore) -> None:
    store.append([AuditEvent("queue.deleted", time=T0 + timedelta(hours=20), actor="root")])
    out = io.StringIO(newline="")
    count = write_csv(store.iter_records(), out)
    assert count == 11
    text = out.getvalue()
    assert text.startswith(",".join(COLUMNS) + "\r\n")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    expected = [record_document(record) for record in store.iter_records()]
    for row, document in zip(rows, expected, strict=True):
        assert int(row["seq"]) == document["seq"]
        assert json.loads(row["rcpt_to"]) == document["rcpt_to"]
        assert json.loads(row["details"]) == document["details"]
        assert row["hash"] == document["hash"]
        assert row["mail_from"] == (document["mail_from"] or "")
    assert rows[-1]["queue_id"] == "" and rows[-1]["rcpt_to"] == "[]"


def test_csv_defuses_spreadsheet_formulas_from_peers(store: AuditStore) -> None:
    store.append(
        [
            AuditEvent(
                "smtp.rejected",
                time=T0 + timedelta(hours=30),
                mail_from='=HYPERLINK("http://evil.test")@x',
                peer="+33 1 23",
                outcome="-1",
                actor="@admin",
            )
        ]
    )
    out = io.StringIO(newline="")
    write_csv(store.iter_records(since=T0 + timedelta(hours=30)), out)
    [row] = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert row["mail_from"] == '\'=HYPERLINK("http://evil.test")@x'
    assert (row["peer"], row["outcome"], row["actor"]) == ("'+33 1 23", "'-1", "'@admin")
