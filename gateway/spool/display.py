"""The text output of ``missive queue``: table rows, durations, sizes, record descriptions.

Role: pure formatting for the operator's terminal, kept apart from the commands.
The STATE column is the directory: ``active/K`` for an entry held by the consumer of
slot K >= 1 (``gateway.spool.layout``).

Invariant: anything that came from a peer or from a file name (addresses, DNs, HELO
names, names in ``corrupt/``) passes through ``printable`` before it reaches the
terminal, so a crafted value cannot move the cursor or change colours (terminal
escape injection); times are shown in UTC. A message's own bytes (the header section
of ``show``, the whole message of ``show --full`` on a terminal) pass through
``terminal_text``/``TerminalText``: UTF-8 decoded (other bytes as ``\\xNN``), CRLF
shown as a line end, every other non-printable character (C0/C1 controls, a bare CR,
bidi overrides, U+2028) escaped by ``gateway.printable.shown`` (CWE-150,
CVE-2021-42574).

Trust level: pure functions; no I/O.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

from gateway.printable import shown
from gateway.spool.model import QueueRecord
from gateway.spool.stagefiles import EntryInfo


def list_row(info: EntryInfo, now: datetime) -> tuple[str, ...]:
    record = info.record
    where = info.state if info.slot == 0 else f"{info.state}/{info.slot}"
    if record is None:
        return (
            info.name,
            info.stage,
            where,
            "?",
            size_text(info.file_size),
            f"unreadable: {info.error}",
            "?",
            "-",
        )
    next_attempt = record.state.next_attempt if info.state == "deferred" else None
    return (
        record.queue_id,
        info.stage,
        where,
        age(now - record.received),
        size_text(record.content_length),
        f"<{record.envelope.mail_from}>",
        str(len(record.envelope.recipients)),
        "-" if next_attempt is None else show_time(next_attempt),
    )


def table(rows: Sequence[tuple[str, ...]]) -> Iterator[str]:
    cleaned = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[column]) for row in cleaned) for column in range(len(cleaned[0]))]
    for row in cleaned:
        yield "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()


def age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def size_text(octets: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if octets >= scale:
            return f"{octets / scale:.1f}{unit}"
    return f"{octets}B"


def show_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def printable(text: str) -> str:
    """No terminal escape from a file name or an address: non-printables as \\xNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class TerminalText:
    """A message's bytes, chunk by chunk, as text a terminal shows and never obeys
    (module docstring): a UTF-8 sequence or a CRLF split between two chunks is
    treated as if whole."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._carried_cr = False

    def feed(self, chunk: bytes, *, final: bool = False) -> str:
        """The text of ``chunk``; ``final`` for the last one (``b""`` allowed)."""
        text = self._decoder.decode(chunk, final)
        if self._carried_cr:
            text, self._carried_cr = "\r" + text, False
        if text.endswith("\r") and not final:  # maybe the first half of a CRLF
            text, self._carried_cr = text[:-1], True
        return shown(text.replace("\r\n", "\n"), keep="\n\t")


def terminal_text(data: bytes) -> str:
    """``data`` (a whole header section) as text a terminal shows and never obeys."""
    return TerminalText().feed(data, final=True)


def describe(record: QueueRecord, stage: str, state: str) -> Iterator[str]:
    """The human description of a record (everything but the content)."""
    params = record.envelope.params
    origin = record.origin
    yield f"queue id:    {record.queue_id}"
    yield f"location:    {stage}/{state}/"
    yield f"received:    {show_time(record.received)}"
    yield f"written:     {show_time(record.created)}"
    if record.parent:
        yield f"parent:      {record.parent}"
    yield f"content:     {record.content_length} bytes, sha256 {record.content_sha256}"
    yield "origin:      " + pairs(
        listener=origin.listener,
        client=origin.client_address,
        helo=origin.helo,
        tls=origin.tls_version,
        cipher=origin.tls_cipher,
        client_dn=origin.client_cert_dn,
        auth=origin.auth_login,
    )
    yield f"mail from:   <{record.envelope.mail_from}> " + pairs(
        SIZE=None if params.size is None else str(params.size),
        BODY=params.body,
        SMTPUTF8="yes" if params.smtputf8 else None,
        RET=params.ret,
        ENVID=params.envid,
        AUTH=params.auth,
    )
    for recipient, status in record.recipients:
        yield f"rcpt to:     <{recipient.address}> " + pairs(
            NOTIFY=None if recipient.notify is None else ",".join(recipient.notify),
            ORCPT=recipient.orcpt,
            status=str(status.status),
            attempts=str(status.attempts),
            next=None if status.next_attempt is None else show_time(status.next_attempt),
            last_error=status.last_error,
        )
    progress = record.state
    updated = show_time(progress.updated)
    yield f"state:       revision {progress.revision}, updated {updated} " + pairs(
        next_attempt=None if progress.next_attempt is None else show_time(progress.next_attempt),
        note=progress.note,
    )


def pairs(**values: str | None) -> str:
    """``key=value`` for each value given; a value with spaces is quoted."""
    return " ".join(
        f'{key}="{value}"' if " " in value else f"{key}={value}"
        for key, value in values.items()
        if value
    )
