"""Events for the audit tests: realistic, distinct per index, at chosen times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
