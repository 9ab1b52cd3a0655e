"""DATA over the wire: SMTP smuggling probes (the equivalent of aiosmtpd's own
``test_smtpsmuggling.py``, stricter: bare CR/LF refuse the message), line length, SIZE,
max_recipients, and pipelining (RFC 2920) of a whole transaction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki

from .front import RELAY, in_thread, raw_exchange, running_front, write_config

HELLO = [
    b"EHLO probe\r\n",
    b"MAIL FROM:<someone@clinique-b.test>\r\n",
    b"RCPT TO:<alice.martin@chu-a.test>\r\n",
    b"DATA\r\n",
]
HEADER = b"From: <someone@clinique-b.test>\r\n\r\n"
SMUGGLED = (
    b"MAIL FROM:<smuggler@clinique-b.test>\r\n"
    b"RCPT TO:<bob.durand@chu-a.test>\r\n"
    b"DATA\r\n"
    b"From: <smuggler@clinique-b.test>\r\n\r\nsmuggled\r\n"
    b".\r\n"
)


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\n"])
async def test_smuggling_probe_creates_no_message(
    tmp_path: Path, dev_pki: DevPki, fake_end: bytes
) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        probe = HEADER + b"first" + fake_end + SMUGGLED
        script = [*HELLO, probe, b"NOOP\r\n"]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-2].startswith("554 5.6.0"), replies
    assert replies[-1].startswith("250"), replies  # the session goes on, in step
    assert front.queue.messages == []
    assert front.queue.aborted == ["message data refused"]


async def test_bare_lf_inside_a_line_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        script = [*HELLO, HEADER + b"a\nb\r\n.\r\n"]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-1].startswith("554 5.6.0"), replies
    assert front.queue.messages == []


async def test_line_too_long_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        script = [*HELLO, HEADER + b"x" * 5000 + b"\r\nafter\r\n.\r\n", b"NOOP\r\n"]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-2].startswith("500 5.5.2"), replies
    assert replies[-1].startswith("250"), replies
    assert front.queue.messages == []


async def test_line_of_998_octets_accepted(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        line = b"." + b"y" * 998 + b"\r\n"  # 998 octets after un-stuffing
        script = [*HELLO, HEADER + line + b".\r\n"]
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert replies[-1].startswith("250 "), replies
    assert front.queue.messages[0].content.endswith(b"\r\n" + HEADER + line[1:])


async def test_size_limits(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY, max_message_size="4KB")
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        limit = config.delivery.max_message_size
        declared = [b"EHLO probe\r\n", f"MAIL FROM:<a@b.test> SIZE={limit + 1}\r\n".encode()]
        too_big = [*HELLO, HEADER + (b"z" * 70 + b"\r\n") * (limit // 70 + 1) + b".\r\n"]
        first = await in_thread(lambda: raw_exchange(port, declared))
        second = await in_thread(lambda: raw_exchange(port, too_big))
    assert first[-1].startswith("552 5.3.4"), first
    assert second[-1].startswith("552 5.3.4"), second
    assert front.queue.messages == []


async def test_max_recipients(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)  # max_recipients = 100 (the minimum)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        rcpts = b"".join(f"RCPT TO:<u{i}@chu-a.test>\r\n".encode() for i in range(101))
        script: list[bytes | tuple[bytes, int]] = [b"EHLO probe\r\n", b"MAIL FROM:<a@b.test>\r\n"]
        script.append((rcpts, 101))
        replies = await in_thread(lambda: raw_exchange(port, script))
    codes = [line[:3] for line in replies[-101:]]
    assert codes == ["250"] * 100 + ["452"], replies[-3:]


async def test_pipelined_transaction(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        burst = b"".join(
            [
                b"MAIL FROM:<someone@clinique-b.test> ENVID=x1\r\n",
                b"RCPT TO:<alice.martin@chu-a.test> NOTIFY=NEVER\r\n",
                b"RCPT TO:<bob.durand@chu-a.test>\r\n",
                b"DATA\r\n",
            ]
        )
        script: list[bytes | tuple[bytes, int]] = [b"EHLO probe\r\n", (burst, 4)]
        script.append(HEADER + b"pipelined\r\n.\r\n")
        replies = await in_thread(lambda: raw_exchange(port, script))
    assert [line[:3] for line in replies[-5:]] == ["250", "250", "250", "354", "250"], replies
    [stored] = front.queue.messages
    assert stored.envelope.addresses == ("alice.martin@chu-a.test", "bob.durand@chu-a.test")
    assert stored.envelope.recipients[0].notify == ("NEVER",)


async def test_the_ehlo_reply_is_one_write(
    tmp_path: Path, dev_pki: DevPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every line of the EHLO reply in one write, so one send (it was one per line)."""
    writes: list[bytes] = []
    real_write = asyncio.StreamWriter.write

    def counting_write(self: asyncio.StreamWriter, data: bytes) -> None:
        writes.append(bytes(data))
        real_write(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", counting_write)
    config = write_config(tmp_path, dev_pki, RELAY)
    async with running_front(config, dev_pki) as front:
        port = front.port("mx")
        replies = await in_thread(lambda: raw_exchange(port, [b"EHLO probe\r\n"]))
    assert replies[1].startswith("250-mx.chu-a.test") and replies[-1] == "250 HELP", replies
    assert "250-PIPELINING" in replies and "250-DSN" in replies
    (ehlo,) = [data for data in writes if data.startswith(b"250-")]
    assert ehlo.decode().splitlines() == replies[1:]
