"""``gateway.inbound.store_client`` with CHUNKING (RFC 3030 §2 with RFC 2920, RFC 2033
§4.2): a one-recipient transaction to an LMTP store that advertises PIPELINING and
CHUNKING goes as ``[RSET,] MAIL, RCPT, BDAT n LAST`` and the content in one write; the
chunk is the content with CRLF line ends and no dot-stuffing; a refused recipient
retires the session; only a session the store had closed moves the message to a fresh
one (the content left before the ``RSET`` was answered).

``ChunkingStore`` is a test double written here: a few lines of LMTP on 127.0.0.1 that
hold every reply until the ``BDAT`` (or ``DATA``) of the group, so a client that waited
for a reply before sending the rest would time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from gateway.inbound import store_client
from gateway.inbound.store_client import StorePool, StoreTarget, TemporaryFailure
from tests.inbound.site import ALICE, BRUNO, CLAIRE, HOST, numbered
from tests.inbound.test_store_pipelining import CountedSessions
from tests.inbound.test_store_pipelining import pool_on as pipelined_pool_on
from tests.peers.dovecot import DovecotInstance

SAVED = "250 2.0.0 <{}> saved\r\n"


@dataclass
class ChunkingStore(CountedSessions):
    """An LMTP store with PIPELINING and CHUNKING. ``refuse``: RCPT refused with 550.
    ``rset_reply``: what RSET gets (None: ``250``; ``b""``: the store hangs up without a
    word; a ``421``: said, then it hangs up; anything else: said, and the store goes on
    with the group). ``silent_rset``: RSET is never answered."""

    refuse: frozenset[str] = frozenset()
    rset_reply: bytes | None = None
    silent_rset: bool = False
    extra_reply: bytes = b""  # sent once, after the replies to the first BDAT, unasked
    connections: int = 0
    commands: list[str] = field(default_factory=list)
    stored: list[tuple[str, list[str], bytes]] = field(default_factory=list)  # verb, rcpts

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted LMTP\r\n")
        recipients: list[str] = []
        held: list[bytes] = []
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb, _, rest = line.partition(" ")
            verb = verb.upper()
            self.commands.append(verb)
            if verb == "LHLO":
                writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
            elif verb == "RSET":
                if self.silent_rset:
                    await asyncio.Event().wait()  # never answers: the client's deadline ends it
                if self.rset_reply == b"":
                    return  # hung up before reading the rest of the group
                writer.write(self.rset_reply or b"250 2.0.0 OK\r\n")
                if (self.rset_reply or b"").startswith(b"421"):
                    await writer.drain()
                    return
            elif verb == "MAIL":
                recipients = []
                held.append(b"250 2.1.0 OK\r\n")
            elif verb == "RCPT":
                address = rest.split("<", 1)[1].rstrip(">")
                if address in self.refuse:
                    held.append(b"550 5.1.1 no such user\r\n")
                else:
                    recipients.append(address)
                    held.append(b"250 2.1.5 OK\r\n")
            elif verb == "BDAT":
                size, last = rest.split(" ")
                assert last == "LAST"
                chunk = await reader.readexactly(int(size))  # read, even when refused
                if recipients:
                    self.stored.append(("BDAT", recipients, chunk))
                    held += [SAVED.format(a).encode() for a in recipients]
                else:
                    held.append(b"503 5.5.1 no valid recipients\r\n")
                writer.write(b"".join(held) + self.extra_reply)
                self.extra_reply = b""
                held, recipients = [], []
            elif verb == "DATA":
                writer.write(b"".join(held) + b"354 go ahead\r\n")
                held = []
                await writer.drain()
                self.stored.append(("DATA", recipients, await reader.readuntil(b"\r\n.\r\n")))
                writer.write(b"".join(SAVED.format(a).encode() for a in recipients))
                recipients = []
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"500 5.5.1 unknown command\r\n")
            await writer.drain()


def pool_on(store: ChunkingStore) -> contextlib.AbstractAsyncContextManager[StorePool]:
    """A one-session pool on ``store`` (``test_store_pipelining.pool_on``)."""
    return pipelined_pool_on(store.session)


def short_timeouts(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    for name in ("DATA_TIMEOUT", "QUIT_TIMEOUT", "COMMAND_TIMEOUT"):
        monkeypatch.setattr(store_client, name, seconds)


@pytest.fixture(autouse=True)
def bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    short_timeouts(monkeypatch, 2.0)


async def test_one_recipient_goes_in_one_write_with_crlf_line_ends_and_no_dot_stuffing() -> None:
    content = b"Subject: x\r\n\r\n.a line with a dot\nbare LF\r\n.\r\nno final line end"
    store = ChunkingStore()
    async with pool_on(store) as pool:
        first = await pool.deliver(CLAIRE, [ALICE], content)
        second = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert [r.code for r in first + second] == [250, 250]
    assert store.commands == [
        "LHLO",
        "MAIL",
        "RCPT",
        "BDAT",
        "RSET",
        "MAIL",
        "RCPT",
        "BDAT",
        "QUIT",
    ]
    assert store.connections == 1
    verb, recipients, chunk = store.stored[0]
    assert (verb, recipients) == ("BDAT", [ALICE])
    assert chunk == (
        b"Subject: x\r\n\r\n.a line with a dot\r\nbare LF\r\n.\r\nno final line end\r\n"
    )
    assert store.stored[1][2] == numbered(2)  # already CRLF: the very same bytes


async def test_a_refused_recipient_keeps_its_rcpt_reply_and_retires_the_session() -> None:
    store = ChunkingStore(refuse=frozenset({ALICE}))
    async with pool_on(store) as pool:
        [refused] = await pool.deliver(CLAIRE, [ALICE], numbered(1))
        [delivered] = await pool.deliver(CLAIRE, [BRUNO], numbered(2))
    assert (refused.code, refused.text) == (550, "5.1.1 no such user")
    assert delivered.code == 250 and BRUNO in delivered.text
    assert [(verb, rcpts) for verb, rcpts, _ in store.stored] == [("BDAT", [BRUNO])]
    assert store.connections == 2  # the session that got a refused chunk was not reused


async def test_several_recipients_go_the_data_way() -> None:
    """With several RCPTs the number of replies to a BDAT would depend on the store."""
    store = ChunkingStore()
    async with pool_on(store) as pool:
        replies = await pool.deliver(CLAIRE, [ALICE, BRUNO], numbered(1))
    assert [r.code for r in replies] == [250, 250]
    assert [(verb, rcpts) for verb, rcpts, _ in store.stored] == [("DATA", [ALICE, BRUNO])]


@pytest.mark.parametrize("rset_reply", [b"", b"421 4.3.2 shutting down\r\n"])
async def test_a_pooled_session_the_store_closed_gives_way_to_a_fresh_one_once(
    rset_reply: bytes,
) -> None:
    store = ChunkingStore()
    async with pool_on(store) as pool:
        await pool.deliver(CLAIRE, [ALICE], numbered(1))
        store.rset_reply = rset_reply
        [reply] = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert reply.code == 250
    assert store.connections == 2
    assert sum(b"<m2@" in chunk for _, _, chunk in store.stored) == 1


async def test_an_rset_refused_on_an_open_session_is_not_retried_elsewhere() -> None:
    """The store said no to RSET but read on and stored the message: a retry on a fresh
    session (what a refused RSET means without chunking) would store it twice."""
    store = ChunkingStore()
    async with pool_on(store) as pool:
        await pool.deliver(CLAIRE, [ALICE], numbered(1))
        store.rset_reply = b"502 5.5.2 not now\r\n"
        [reply] = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert reply.code == 250
    assert store.connections == 1
    assert sum(b"<m2@" in chunk for _, _, chunk in store.stored) == 1


async def test_an_unanswered_rset_fails_the_transaction_without_a_second_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short_timeouts(monkeypatch, 0.2)
    store = ChunkingStore()
    async with pool_on(store) as pool:
        await pool.deliver(CLAIRE, [ALICE], numbered(1))
        store.silent_rset = True
        with pytest.raises(TemporaryFailure):
            await pool.deliver(CLAIRE, [ALICE], numbered(2))
    assert store.connections == 1


@pytest.mark.peer
async def test_dovecot_stores_a_chunked_message_as_sent(
    dovecot_factory: Callable[..., DovecotInstance],
) -> None:
    """Dovecot advertises CHUNKING: the lines that DATA would have dot-stuffed, and a bare
    LF, come back from IMAP as a DATA delivery stores them."""
    dovecot = dovecot_factory(users={ALICE: "alice-pw"})
    content = b"Subject: chunked\r\n\r\n.starts with a dot\r\n..two\nbare LF\r\n"
    pool = StorePool(StoreTarget(True, "127.0.0.1", dovecot.lmtp_port, HOST), size=1)
    try:
        [first] = await pool.deliver(CLAIRE, [ALICE], content)
        [second] = await pool.deliver(CLAIRE, [ALICE], numbered(2))
    finally:
        await pool.aclose()
    assert first.code == 250 and second.code == 250 and pool.opened == 1
    stored = dovecot.fetch_all(ALICE)
    assert len(stored) == 2
    assert stored[0].endswith(b"Subject: chunked\r\n\r\n.starts with a dot\r\n..two\r\nbare LF\r\n")


async def test_an_extra_reply_after_the_chunk_is_a_temporary_failure_not_a_delivery() -> None:
    """Replies out of step (one too many): none of them may say "delivered"; the
    session is dropped and the message retried later (review R1, session 9)."""
    store = ChunkingStore(refuse=frozenset({ALICE}), extra_reply=b"250 2.0.0 <x> saved\r\n")
    async with pool_on(store) as pool:
        with pytest.raises(TemporaryFailure, match="extra replies"):
            await pool.deliver(CLAIRE, [ALICE], numbered(1))
        [reply] = await pool.deliver(CLAIRE, [BRUNO], numbered(2))
    assert reply.code == 250 and store.connections == 2  # a fresh session afterwards


async def test_a_tls_error_on_the_reset_is_not_a_closed_session() -> None:
    """Only an end of stream, a reset connection or a 421 let a chunked group move to
    a fresh session at once; a TLS error mid-stream fails the transaction."""

    class Talk:
        async def next_reply(self) -> None:
            raise ssl.SSLError("decryption failed or bad record mac")

    with pytest.raises(ssl.SSLError):
        await store_client._stale_unless_closed(Talk())  # type: ignore[arg-type]
    for lost in (ConnectionResetError(), TemporaryFailure("connection closed")):

        class Closed:
            async def next_reply(self, error: BaseException = lost) -> None:
                raise error

        with pytest.raises(store_client.StaleSession):
            await store_client._stale_unless_closed(Closed())  # type: ignore[arg-type]
