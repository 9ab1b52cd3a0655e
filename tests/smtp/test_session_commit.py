"""250 only after the spool commit (STYLE 4), 4xx when the commit fails, the cap on
concurrent DATA transfers, and the per-IP connection limit; a client in the test's own
event loop, with a spool double whose commit the test holds back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.audit import AuditWriteError
from gateway.pki.dev import DevPki
from gateway.spool import SpoolFull

from .front import RELAY, FakeQueue, running_front, write_config

TRANSACTION = (
    b"EHLO probe\r\n"
    b"MAIL FROM:<someone@clinique-b.test>\r\n"
    b"RCPT TO:<alice.martin@chu-a.test>\r\n"
    b"DATA\r\n"
)
CONTENT = b"From: <someone@clinique-b.test>\r\n\r\nhello\r\n.\r\n"


async def _reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await reader.readline()).decode()
        if len(line) < 4 or line[3] != "-":
            return line.rstrip()


async def _open_transaction(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(TRANSACTION)
    codes = [await _reply(reader) for _ in range(5)]  # greeting, EHLO, MAIL, RCPT, DATA
    assert [c[:3] for c in codes] == ["220", "250", "250", "250", "354"], codes
    return reader, writer


async def test_250_only_after_commit(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    queue = FakeQueue()
    queue.commit_gate.clear()
    async with running_front(config, dev_pki, queue=queue) as front:
        reader, writer = await _open_transaction(front.port("mx"))
        writer.write(CONTENT)
        reply = asyncio.ensure_future(_reply(reader))
        await queue.commit_started.wait()
        assert queue.messages == []  # commit in progress: nothing stored yet ...
        assert not reply.done()  # ... and no reply sent
        queue.commit_gate.set()
        final = await reply
        assert final.startswith("250 2.0.0 OK queued as Q0001")
        assert len(queue.messages) == 1
        writer.close()
        await writer.wait_closed()


async def test_failed_commit_gives_4xx(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    queue = FakeQueue()
    queue.fail_commit = SpoolFull("disk full")
    async with running_front(config, dev_pki, queue=queue) as front:
        reader, writer = await _open_transaction(front.port("mx"))
        writer.write(CONTENT)
        final = await _reply(reader)
        writer.close()
        await writer.wait_closed()
    assert final.startswith("452 4.3.1"), final
    assert queue.messages == []
    [refusal] = front.audit.of_type("smtp.refused")
    assert refusal.details["stage"] == "data"
    assert refusal.mail_from and refusal.rcpt_to  # whose message was refused (an auditor asks)


async def test_concurrent_data_cap(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki, max_data_transfers=1) as front:
        port = front.port("mx")
        first_reader, first_writer = await _open_transaction(port)  # holds the one slot
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(TRANSACTION)
        codes = [await _reply(reader) for _ in range(5)]
        assert codes[-1].startswith("451 4.3.2"), codes
        first_writer.write(CONTENT)
        assert (await _reply(first_reader)).startswith("250 ")
        for stream in (writer, first_writer):
            stream.close()
            await stream.wait_closed()


async def test_connections_per_ip_limited(tmp_path: Path, dev_pki: DevPki) -> None:
    listeners = RELAY + "max_connections_per_ip = 1\n"
    config = write_config(tmp_path, dev_pki, listeners)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await _reply(reader)).startswith("220 ")
        second_reader, second_writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await _reply(second_reader)).startswith("421 4.7.0")
        assert await second_reader.read() == b""  # closed by the server
        writer.write(b"QUIT\r\n")
        assert (await _reply(reader)).startswith("221")
        for stream in (writer, second_writer):
            stream.close()
            await stream.wait_closed()


async def test_audit_failure_at_commit_gives_451(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    queue = FakeQueue()
    queue.fail_commit = AuditWriteError("trail unavailable")
    async with running_front(config, dev_pki, queue=queue) as front:
        reader, writer = await _open_transaction(front.port("mx"))
        writer.write(CONTENT)
        final = await _reply(reader)
        writer.close()
        await writer.wait_closed()
    assert final.startswith("451 4.3.0"), final
    assert "trail" not in final  # the cause stays in the log
    assert queue.messages == []


async def test_idle_client_in_data_is_disconnected(tmp_path: Path, dev_pki: DevPki) -> None:
    listeners = RELAY + 'data_timeout = "1s"\n'
    config = write_config(tmp_path, dev_pki, listeners)
    queue = FakeQueue()
    async with running_front(config, dev_pki, queue=queue) as front:
        reader, writer = await _open_transaction(front.port("mx"))
        writer.write(b"From: <someone@clinique-b.test>\r\n\r\npartial line")
        assert await reader.read() == b""  # the server closed the connection
        writer.close()
        await writer.wait_closed()
        while not queue.aborted:  # the abort runs as its own task once the session ended
            await asyncio.sleep(0.01)
    assert queue.aborted == ["connection lost during DATA"]
    assert queue.messages == []
