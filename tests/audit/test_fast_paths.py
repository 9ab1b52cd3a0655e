"""The fast paths give exactly what the reference paths give.

- ``seal_row`` (the store's writer) against ``row_of(seal(...))``, whose canonical bytes
  come from the C JSON encoder with ``sort_keys``: same row, same hash, for any event;
- a golden chain: hashes computed by the first writer (before the fast path existed)
  must come out of the new writer bit for bit, so trails written earlier still verify;
- ``AuditEvent`` built on its fast path (tuples, a dict of known keys) against the
  field-by-field path (lists force it): same event, or the same error;
- ``format_time`` and ``parse_time`` against the ``isoformat`` round trip they replaced:
  same text for any aware time, same times accepted, the same ones refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import AuditEvent, AuditStore
from gateway.audit.chain import verify_rows
from gateway.audit.event import MAX_DETAILS, MAX_ITEMS, MAX_TEXT_BYTES, format_time, parse_time
from gateway.audit.record import GENESIS_HASH, Row, row_of, seal, seal_row
from gateway.audit.store import _INSERT

from .events import any_event

_PROPERTY = settings(deadline=None, database=None)
MOMENT = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
_hashes = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@_PROPERTY
@given(event=any_event, seq=st.integers(min_value=1, max_value=2**62), prev_hash=_hashes)
def test_the_writer_row_is_the_reference_row(event: AuditEvent, seq: int, prev_hash: str) -> None:
    assert seal_row(seq, event, prev_hash) == row_of(seal(seq, event, prev_hash))


@_PROPERTY
@given(event=any_event, moment=st.datetimes(timezones=st.just(UTC)), prev_hash=_hashes)
def test_a_row_sealed_at_a_time_is_the_row_of_the_event_at_that_time(
    event: AuditEvent, moment: datetime, prev_hash: str
) -> None:
    assert seal_row(7, event, prev_hash, moment) == seal_row(7, event.at(moment), prev_hash)


def test_hashes_written_before_the_fast_path_come_out_unchanged() -> None:
    event = AuditEvent(
        "smtp.accepted",
        time=MOMENT,
        queue_id="Q1",
        mail_from="alice@chu-a.test",
        rcpt_to=("é@x.test", "b@x.test"),
        cert_serials=("3f:1a",),
        algorithms=("aes-256-gcm",),
        sha256="ab" * 32,
        details={"note": 'a"b\\c\n\x01', "listener": "submission"},
    )
    first = seal_row(1, event, GENESIS_HASH)
    second = seal_row(2, event, first.hash)
    # computed with the writer as first released (json.dumps-style canonical form)
    assert first.hash == "063e282750a525f5314da8168ff99553c7884de40b016079387d3c0357186430"
    assert second.hash == "abdc98990e0a6dd94831845882e5bf63d65c260b7708bf7624d1b67e5b1cd6a7"
    assert second.details == '{"listener":"submission","note":"a\\"b\\\\c\\n\\u0001"}'
    assert second.rcpt_to == '["é@x.test","b@x.test"]'
    assert verify_rows([first, second]).ok


def test_a_trail_written_by_the_old_writer_and_extended_by_the_new_one_verifies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.sqlite"
    with AuditStore.open_writer(path) as store:
        store.append([AuditEvent("smtp.accepted", time=MOMENT, queue_id="Q0")])
    old_rows: list[Row] = []
    with AuditStore.open_reader(path) as reader:
        head = reader.head()
        assert head is not None
        # the reference writer appends two records by hand, as a pre-upgrade gateway did
        previous = head.hash
        for seq in (2, 3):
            record = seal(seq, AuditEvent("relay.sent", time=MOMENT, queue_id=f"Q{seq}"), previous)
            old_rows.append(row_of(record))
            previous = record.hash
    with AuditStore.open_writer(path) as store:
        connection = store._connection
        connection.executemany(_INSERT, old_rows)
        receipts = store.append([AuditEvent("relay.delivered", time=MOMENT, queue_id="Q4")])
        report = store.verify()
    assert report.ok, report.problem
    assert report.records == 4
    assert receipts[0].seq == 4


_SCALARS = ("queue_id", "message_id", "mail_from", "actor", "peer", "outcome")
_SEQUENCES = ("rcpt_to", "cert_serials", "algorithms")
_texts = st.text(max_size=20) | st.text("abc@.-", max_size=20)
_keys = st.sampled_from(["listener", "size", "stage"]) | st.from_regex(
    r"[a-z][a-z0-9_.-]{0,6}", fullmatch=True
)
_bad_texts: st.SearchStrategy[object] = st.sampled_from(
    ["x" * (MAX_TEXT_BYTES + 1), "é" * (MAX_TEXT_BYTES // 2 + 1), b"bytes", 42, "\udcff"]
)


@st.composite
def _event_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Valid fields, then at most one spoilt (a bad, oversized or surrogate value)."""
    fields: dict[str, Any] = {name: draw(st.none() | _texts) for name in _SCALARS}
    for name in _SEQUENCES:
        fields[name] = tuple(draw(st.lists(_texts, max_size=4)))
    fields["details"] = draw(st.dictionaries(_keys, _texts, max_size=4))
    fields["sha256"] = draw(st.none() | _hashes)
    spoilt = draw(st.sampled_from([None, *_SCALARS, *_SEQUENCES, "details", "key", "sha256"]))
    bad = draw(_bad_texts)
    if spoilt in _SCALARS:
        fields[spoilt] = bad
    elif spoilt in _SEQUENCES:
        fields[spoilt] = (*fields[spoilt], bad)
    elif spoilt == "details":
        fields["details"] = {**fields["details"], "k": bad}
    elif spoilt == "key":
        fields["details"] = {
            **fields["details"],
            draw(st.sampled_from(["Bad Key", "k" * 70, 3])): "v",
        }
    elif spoilt == "sha256":
        fields["sha256"] = draw(st.sampled_from(["ABC", "A" * 64, 7]))
    return fields


def _build(fields: dict[str, Any]) -> AuditEvent | str:
    try:
        return AuditEvent("smtp.accepted", time=MOMENT, **fields)
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"


@_PROPERTY
@given(fields=_event_fields())
def test_the_fast_event_checks_agree_with_the_field_by_field_ones(fields: dict[str, Any]) -> None:
    # lists are not on the fast path: they take the field-by-field checks
    slow_fields = {**fields, **{name: list(fields[name]) for name in ("rcpt_to", "algorithms")}}
    for _ in range(2):  # the second time, details keys and types are known valid
        fast, slow = _build(fields), _build(slow_fields)
        assert fast == slow
        if isinstance(fast, AuditEvent):
            assert isinstance(slow, AuditEvent)
            assert list(fast.details) == list(slow.details) == sorted(fast.details)


def test_limits_still_hold_on_the_fast_path() -> None:
    known = AuditEvent("smtp.accepted", details={"k": "v"})  # "k" is now a known key
    assert dict(known.details) == {"k": "v"}
    with pytest.raises(ValueError, match="more than"):
        AuditEvent("smtp.accepted", rcpt_to=("a@x",) * (MAX_ITEMS + 1))
    with pytest.raises(ValueError, match="more than"):
        AuditEvent("smtp.accepted", details={f"k{i}": "v" for i in range(MAX_DETAILS + 1)})
    with pytest.raises(ValueError, match="message content never goes"):
        AuditEvent("smtp.accepted", details={"k": "x" * (MAX_TEXT_BYTES + 1)})
    with pytest.raises(ValueError, match="expected str"):
        AuditEvent("smtp.accepted", details={"k": 1})  # type: ignore[dict-item]
    spread = AuditEvent("smtp.accepted", queue_id="q" * 3000, peer="p" * 3000)  # > 4 KiB together
    assert spread.queue_id == "q" * 3000


def _reference_format_time(moment: datetime) -> str:
    """``format_time`` as first written: ``isoformat`` of the time moved to UTC."""
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def _reference_parse_time(text: str) -> datetime:
    """``parse_time`` as first written: ``fromisoformat``, then the exact round trip."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None or _reference_format_time(moment) != text:
        raise ValueError(f"not a trail time: {text!r}")
    return moment.astimezone(UTC)


_zones = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=0)),
        timezone(timedelta(hours=2)),
        timezone(-timedelta(hours=5, minutes=30)),
    ]
)
_aware_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_zones
)


@_PROPERTY
@given(moment=_aware_times)
def test_time_text_is_the_isoformat_text(moment: datetime) -> None:
    text = format_time(moment)
    assert text == _reference_format_time(moment)
    assert parse_time(text) == moment
    assert parse_time(text).tzinfo is UTC


def _outcome(parse: Any, text: str) -> datetime | str:
    try:
        return parse(text)  # type: ignore[no-any-return]
    except ValueError:
        return "ValueError"


_time_like = st.from_regex(
    r"[0-9０-９]{1,5}-[0-9]{1,2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,7})?)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?\n?",
    fullmatch=True,
)


@_PROPERTY
@given(text=_time_like | st.text(max_size=30) | _aware_times.map(format_time))
def test_parse_time_accepts_exactly_what_the_round_trip_accepted(text: str) -> None:
    assert _outcome(parse_time, text) == _outcome(_reference_parse_time, text)


def _single_edits(text: str) -> list[str]:
    """``text`` with one character replaced, inserted or deleted, everywhere."""
    chars = "0 9T Zz:.-+\n\u0660\uff19é"
    edits = [text[:i] + text[i + 1 :] for i in range(len(text))]
    for i in range(len(text) + 1):
        edits += [text[:i] + char + text[i:] for char in chars]
        edits += [text[:i] + char + text[i + 1 :] for char in chars]
    return edits


def test_parse_time_agrees_with_the_round_trip_on_every_single_edit() -> None:
    for moment in (MOMENT, datetime(999, 9, 9, 9, 9, 9, 9, tzinfo=UTC)):
        for text in _single_edits(format_time(moment)):
            assert _outcome(parse_time, text) == _outcome(_reference_parse_time, text), text


def test_parse_time_refuses_values_out_of_range_and_loose_forms() -> None:
    for bad in (
        "2026-13-01T00:00:00.000000Z",
        "2026-02-30T00:00:00.000000Z",
        "0000-01-01T00:00:00.000000Z",
        "2026-01-01T24:00:00.000000Z",
        "2026-01-01T00:00:60.000000Z",
        "2026-01-01T00:00:00.000000+00:00",
        "2026-01-01 00:00:00.000000Z",
        "2026-01-01T00:00:00.000000z",
        "2026-01-01T00:00:00.000000Z\n",
        "２026-01-01T00:00:00.000000Z",
    ):
        with pytest.raises(ValueError):
            parse_time(bad)
    with pytest.raises(TypeError):
        parse_time(b"2026-01-01T00:00:00.000000Z")  # type: ignore[arg-type]
