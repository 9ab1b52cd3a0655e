"""``gateway.inbound.store_client`` against a mail store that misbehaves in ways a real
Dovecot or Postfix does not on demand (the real ones are in test_delivery*.py)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.inbound import store_client
from gateway.inbound.store_client import TemporaryFailure, send_over_protocol


async def test_a_store_that_stops_reading_during_data_times_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It accepts the transaction, answers 354, then reads nothing more: the write of the
    message must give up (a pooled session would otherwise be held for ever)."""
    monkeypatch.setattr(store_client, "DATA_TIMEOUT", 0.5)
    monkeypatch.setattr(store_client, "QUIT_TIMEOUT", 0.5)
    stalled, release, done = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def store(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 store LMTP\r\n")
        for answer in (b"250 store\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            await reader.readline()
            writer.write(answer)
            await writer.drain()
        stalled.set()
        await release.wait()  # never reads the message
        writer.transport.abort()
        done.set()

    server = await asyncio.start_server(store, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TemporaryFailure, match="TimeoutError"):
            await send_over_protocol(
                lmtp=True,
                host="127.0.0.1",
                port=port,
                helo="mx.chu-a.test",
                mail_from="claire.durand@clinique-b.test",
                recipients=["alice.martin@chu-a.test"],
                content=b"Subject: x\r\n\r\n" + (b"y" * 998 + b"\r\n") * 20_000,
            )
        assert stalled.is_set()
    finally:
        release.set()
        if stalled.is_set():
            await done.wait()
        server.close()
        await server.wait_closed()
