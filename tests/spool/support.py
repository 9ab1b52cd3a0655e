"""Shared helpers of the spool tests: a recording audit trail, envelopes, spool factory.

``RecordingTrail`` stands in for ``gateway.audit.AuditSink`` in unit tests (the crash
and CLI tests use the real sink): it keeps every event and can be told to fail, to
check that the spool never acknowledges what the trail did not commit.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.audit import AuditEvent, AuditWriteError
from gateway.spool import Envelope, MailParams, Origin, Recipient, Spool

MB = 1024 * 1024


class RecordingTrail:
    """Keeps events in order; ``fail_on`` names event types whose commit fails."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.fail_on: set[str] = set()

    async def record(self, event: AuditEvent) -> object:
        if event.type in self.fail_on:
            raise AuditWriteError(f"injected failure for {event.type}")
        self.events.append(event)
        return None

    def types(self) -> list[str]:
        return [event.type for event in self.events]

    def of(self, kind: str) -> list[AuditEvent]:
        return [event for event in self.events if event.type == kind]


def envelope(*recipients: str, sender: str = "alice.martin@chu-a.test") -> Envelope:
    addresses = recipients or ("bob@clinique-b.test",)
    return Envelope(
        sender,
        tuple(Recipient(address, notify=("FAILURE", "DELAY")) for address in addresses),
        MailParams(size=100, body="8BITMIME", ret="HDRS", envid="env-1"),
    )


def origin() -> Origin:
    return Origin(
        "submission",
        client_address="127.0.0.1",
        helo="thunderbird.local",
        tls_version="TLSv1.3",
        auth_login="alice.martin@chu-a.test",
    )


def message(number: int = 0, body: bytes = b"Bonjour\r\n") -> bytes:
    return (
        b"From: alice.martin@chu-a.test\r\nTo: bob@clinique-b.test\r\n"
        + f"Subject: Patient {number}\r\n".encode()
        + b"\r\n"
        + body
    )


def make_spool(root: Path, trail: RecordingTrail, *, limit: int = 10 * MB) -> Spool:
    return Spool(root, audit=trail, actor="test", max_message_size=limit, io_threads=4)


async def repeated(chunk: bytes, count: int) -> AsyncIterator[bytes]:
    """An async byte source of ``count`` times ``chunk`` (the same object each time)."""
    for _ in range(count):
        yield chunk


def mode(path: Path) -> int:
    return os.stat(path, follow_symlinks=False).st_mode & 0o777
