"""The SMTP front on a real spool scribe (what ``missive serve`` runs): ``250`` when the
scribe has written the message, ``451`` and nothing on disk when the scribe dies before
or during the transaction, ``250`` again once it is restarted."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from gateway.pki.dev import DevPki
from gateway.spool import RECEIVED, Spool
from gateway.spool.scribe_client import ScribeQueue

from .front import RELAY, running_front, write_config

GREETING_TO_RCPT = (
    b"EHLO probe\r\nMAIL FROM:<someone@clinique-b.test>\r\nRCPT TO:<alice.martin@chu-a.test>\r\n"
)
CONTENT = b"From: <someone@clinique-b.test>\r\nSubject: consultation\r\n\r\nhello\r\n"


async def _reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await reader.readline()).decode()
        if len(line) < 4 or line[3] != "-":
            return line.rstrip()


async def _start(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GREETING_TO_RCPT)
    codes = [(await _reply(reader))[:3] for _ in range(4)]
    assert codes == ["220", "250", "250", "250"]
    return reader, writer


async def _send(port: int) -> str:
    """One whole transaction; the final reply (or the reply to DATA if it is not 354)."""
    reader, writer = await _start(port)
    try:
        writer.write(b"DATA\r\n")
        if not (answer := await _reply(reader)).startswith("354"):
            return answer
        writer.write(CONTENT + b".\r\n")
        return await _reply(reader)
    finally:
        writer.close()
        await writer.wait_closed()


async def _stored(spool_dir: Path) -> list[str]:
    async with Spool(spool_dir, audit=_NoTrail(), actor="test", max_message_size=1 << 20) as s:
        return sorted(info.name for info in await s.queue(RECEIVED).scan("incoming"))


class _NoTrail:
    async def record(self, event: object) -> None:
        return None


async def _scribe_gone(queue: ScribeQueue) -> None:
    for _ in range(500):
        if queue.pid is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the killed scribe was not noticed")


async def test_250_451_and_250_again_as_the_scribe_lives_dies_and_restarts(
    tmp_path: Path, dev_pki: DevPki
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    spool_dir = tmp_path / "spool"
    scribe = ScribeQueue(
        spool_dir=spool_dir,
        audit_path=tmp_path / "audit.sqlite",
        actor="smtp",
        max_message_size=1 << 20,
        restart_interval=1.0,
    )
    await scribe.start()
    try:
        async with running_front(config, dev_pki, queue=scribe) as front:
            port = front.port("mx")
            first = await _send(port)
            assert first.startswith("250 2.0.0 OK queued as ")
            kept = [first.rsplit(" ", 1)[1]]

            # the scribe dies in the middle of DATA: no 250 for what it may not have written
            reader, writer = await _start(port)
            writer.write(b"DATA\r\n")
            assert (await _reply(reader)).startswith("354")
            writer.write(CONTENT[:20])
            await writer.drain()
            pid = scribe.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await _scribe_gone(scribe)
            writer.write(CONTENT[20:] + b".\r\n")
            assert (await _reply(reader)).startswith("451 4.3.0")
            writer.close()
            await writer.wait_closed()
            # the scribe can no longer record it: the front's own trail has the refusal
            (refused,) = front.audit.of_type("smtp.refused")
            assert refused.outcome == "451 4.3.0" and refused.mail_from

            # within the restart interval: refused at DATA, before any content is taken
            assert (await _send(port)).startswith("451 4.3.0")

            await asyncio.sleep(1.1)
            again = await _send(port)
            assert again.startswith("250 2.0.0 OK queued as ")
            kept.append(again.rsplit(" ", 1)[1])
            assert scribe.pid not in (None, pid)
    finally:
        await scribe.aclose()
    assert await _stored(spool_dir) == sorted(kept)
