"""Shared helpers of the spool tests: a recording audit trail, envelopes, spool factory,
and the on-disk site the CLI and multi-process tests share (a spool and a real audit
database in a temp dir, filled through the real sink, worked by ``stage_worker``
subprocesses).

``RecordingTrail`` stands in for ``gateway.audit.AuditSink`` in unit tests (the crash
and CLI tests use the real sink): it keeps every event and can be told to fail, to
check that the spool never acknowledges what the trail did not commit.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.audit import AuditEvent, AuditSink, AuditWriteError
from gateway.spool import RECEIVED, Envelope, MailParams, Origin, Recipient, Spool

MB = 1024 * 1024
REPOSITORY = Path(__file__).resolve().parents[2]
Run = Callable[..., tuple[int, str, str]]
"""``missive ARGS...`` in this process: (exit status, stdout, stderr)."""


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


@dataclass(frozen=True)
class QueueSite:
    """A spool and its audit database, as ``missive queue`` and the workers name them."""

    spool: Path
    trail: Path

    @property
    def args(self) -> tuple[str | Path, ...]:
        return ("--spool", self.spool, "--audit-db", self.trail)


def fill_received(site: QueueSite, count: int, body: bytes = b"Bonjour\r\n") -> list[str]:
    """``count`` messages (``message(n, body)``) added to ``received`` as the SMTP front
    adds them, through the real audit sink; their queue ids in order."""

    async def add_all() -> list[str]:
        async with AuditSink(site.trail) as sink:
            async with Spool(
                site.spool, audit=sink, actor="smtp", max_message_size=1 << 20
            ) as spool:
                queue = spool.queue(RECEIVED)
                return [
                    await queue.add(envelope(), origin(), message(n, body)) for n in range(count)
                ]

    return asyncio.run(add_all())


def stage_worker_command(
    scenario: str, spool: Path, trail: Path, count: int, *extra: str
) -> list[str]:
    """``python -m tests.spool.stage_worker SCENARIO SPOOL AUDIT_DB COUNT [EXTRA...]``."""
    return [
        *(sys.executable, "-m", "tests.spool.stage_worker", scenario),
        *(str(spool), str(trail), str(count), *extra),
    ]


def start_stage_worker(
    site: QueueSite,
    started: list[subprocess.Popen[str]],
    scenario: str,
    count: int,
    *extra: str,
) -> subprocess.Popen[str]:
    """A ``stage_worker`` subprocess on ``site`` with pipes on stdin/stdout/stderr,
    appended to ``started`` (the ``workers`` fixture stops each one by PID)."""
    process = subprocess.Popen(
        stage_worker_command(scenario, site.spool, site.trail, count, *extra),
        cwd=REPOSITORY,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started.append(process)
    return process
