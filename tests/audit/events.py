"""Events for the audit tests: realistic, distinct per index, at chosen times; and a
Hypothesis strategy for arbitrary valid events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from gateway.audit import AuditEvent

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


def make_event(index: int, *, time: datetime | None = None) -> AuditEvent:
    """A realistic acceptance event, distinct per ``index``; one hour apart from T0."""
    return AuditEvent(
        type="smtp.accepted",
        time=T0 + timedelta(hours=index) if time is None else time,
        queue_id=f"Q{index:06d}",
        message_id=f"<{index}.msg@chu-a.test>",
        mail_from="alice.martin@chu-a.test",
        rcpt_to=("bob.durand@clinique-b.test", f"r{index}@clinique-b.test"),
        actor="alice.martin@chu-a.test",
        peer="127.0.0.1:41234",
        cert_serials=("3f:1a",),
        algorithms=("aes-256-gcm", "rsa-oaep"),
        outcome="accepted",
        sha256=f"{index:064x}",
        details={"listener": "submission", "size": str(1000 + index)},
    )


_text = st.text(max_size=40)
any_event = st.builds(
    AuditEvent,
    type=st.from_regex(r"[a-z]{1,8}(\.[a-z][a-z_]{0,7}){1,3}", fullmatch=True),
    time=st.datetimes(
        min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)
    ),
    queue_id=st.none() | _text,
    message_id=st.none() | _text,
    mail_from=st.none() | _text,
    rcpt_to=st.lists(_text, max_size=5).map(tuple),
    actor=st.none() | _text,
    peer=st.none() | _text,
    cert_serials=st.lists(_text, max_size=3).map(tuple),
    algorithms=st.lists(_text, max_size=3).map(tuple),
    outcome=st.none() | _text,
    sha256=st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    details=st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True), _text, max_size=8
    ),
)
