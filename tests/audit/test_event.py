"""AuditEvent: explicit fields, validation, and the refusal of anything content-sized."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.audit import AuditEvent
from gateway.audit.event import MAX_DETAILS, MAX_ITEMS, MAX_TEXT_BYTES, format_time, parse_time

BODY = "Subject: Compte rendu\r\n\r\n" + "Patient X, né le ...\r\n" * 400  # > 4 KiB


def test_event_normalises_sequences_and_details() -> None:
    event = AuditEvent(
        "smtp.accepted",
        rcpt_to=["b@x.test", "a@x.test"],  # type: ignore[arg-type]
        details={"z": "1", "a": "2"},
    )
    assert event.rcpt_to == ("b@x.test", "a@x.test")  # order kept: it is the envelope's
    assert list(event.details) == ["a", "z"]
    with pytest.raises(TypeError):
        event.details["b"] = "3"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.outcome = "rejected"  # type: ignore[misc]


def test_event_time_is_kept_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    event = AuditEvent("smtp.accepted", time=datetime(2026, 1, 1, 9, 0, tzinfo=paris))
    assert event.time == datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    assert event.time is not None and event.time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "fields",
    [
        {"message_id": BODY},
        {"outcome": BODY},
        {"rcpt_to": ("ok@x.test", BODY)},
        {"details": {"note": BODY}},
        {"mail_from": b"bytes@x.test"},
        {"rcpt_to": "single@x.test"},
        {"rcpt_to": tuple(f"r{i}@x.test" for i in range(MAX_ITEMS + 1))},
        {"details": {f"k{i}": "v" for i in range(MAX_DETAILS + 1)}},
        {"details": {"Bad Key": "v"}},
        {"details": {"k": 1}},
        {"sha256": "ABC"},
        {"sha256": "A" * 64},
        {"time": datetime(2026, 1, 1, 8, 0)},  # naive: ambiguous
    ],
    ids=lambda fields: next(iter(fields)),
)
def test_event_refuses_bad_or_oversized_fields(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="audit field"):
        AuditEvent("smtp.accepted", **fields)


def test_oversized_text_message_says_content_never_goes_in() -> None:
    with pytest.raises(ValueError, match="message content never goes into the audit trail"):
        AuditEvent("smtp.accepted", message_id=BODY)


def test_size_limit_counts_utf8_bytes() -> None:
    AuditEvent("smtp.accepted", peer="x" * MAX_TEXT_BYTES)
    with pytest.raises(ValueError):
        AuditEvent("smtp.accepted", peer="é" * (MAX_TEXT_BYTES // 2 + 1))


@pytest.mark.parametrize(
    "name", ["accepted", "SMTP.accepted", "smtp..accepted", "smtp.accepted ", "", "a." + "b" * 70]
)
def test_event_type_must_be_a_dotted_lower_case_name(name: str) -> None:
    with pytest.raises(ValueError, match="dotted"):
        AuditEvent(name)


def test_lone_surrogates_from_peers_are_escaped_not_refused() -> None:
    hostile = b"\xff\xfe@x.test".decode("utf-8", "surrogateescape")
    event = AuditEvent("smtp.rejected", mail_from=hostile, rcpt_to=(hostile,))
    assert event.mail_from == "\\udcff\\udcfe@x.test"
    assert event.rcpt_to == ("\\udcff\\udcfe@x.test",)
    assert event.mail_from.encode("utf-8")


def test_reserved_types_are_flagged() -> None:
    assert AuditEvent("audit.checkpoint").reserved
    assert not AuditEvent("smtp.accepted").reserved


def test_at_stamps_a_copy_equal_to_a_fresh_event() -> None:
    event = AuditEvent("relay.delivered", queue_id="Q1", details={"mx": "mx.b.test"})
    moment = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    stamped = event.at(moment)
    assert event.time is None
    assert stamped == dataclasses.replace(event, time=moment)
    assert hash(stamped) == hash(dataclasses.replace(event, time=moment))
    with pytest.raises(ValueError):
        event.at(datetime(2026, 3, 1))


def test_time_format_is_fixed_width_utc_and_strictly_parsed() -> None:
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2026-03-01T10:00:00.000000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(datetime(2026, 3, 1))
    assert parse_time("2026-03-01T10:00:00.000000Z") == moment
    for loose in ("2026-03-01T10:00:00Z", "2026-03-01 10:00:00.000000Z", "2026-03-01T10:00:00"):
        with pytest.raises(ValueError):
            parse_time(loose)
