"""Adversarial hunt on local delivery (session 5, H16): ``gateway.inbound.store_client``
and ``gateway.inbound.maildir`` against a hostile or buggy mail store.

Promises attacked (module docstrings, issue 7 item 3): "250/delivered only when the
store said so", "lose nothing (a crash may duplicate, never lose)", "a protocol error
... raises ``TemporaryFailure``", "STARTTLS required off loopback", "no address can
write outside ``PATH``".

``Store`` is a test double written here: a few lines of LMTP/SMTP on 127.0.0.1 whose
replies after DATA (and extra bytes) each test chooses, recording what it stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.inbound import store_client
from gateway.inbound.maildir import PermanentFailure, deliver_to_maildir
from gateway.inbound.store_client import (
    StorePool,
    StoreReply,
    StoreTarget,
    TemporaryFailure,
    send_over_protocol,
)
from gateway.pki.dev import DevPki
from tests.inbound.site import (
    ALICE,
    BRUNO,
    CLAIRE,
    INBOUND_AGENT,
    envelope,
    lmtp_to,
    numbered,
    opened_site,
)
from tests.peers.fixtures import tls_files

HOSPITAL = "hospital.chu-a.test"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Store:
    """A scripted LMTP server: ``after_data(recipients)`` gives the bytes written once
    the message's final dot is read (default: one ``250`` per accepted recipient)."""

    after_data: Callable[[list[str]], bytes] | None = None
    hang_up_after_data: bool = False
    stored: list[tuple[list[str], bytes]] = field(default_factory=list)
    connections: int = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted LMTP\r\n")
        recipients: list[str] = []
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb == "LHLO":
                writer.write(b"250-scripted\r\n250 PIPELINING\r\n")
            elif verb in ("RSET", "MAIL"):
                recipients = [] if verb == "RSET" else recipients
                writer.write(b"250 2.0.0 OK\r\n")
            elif verb == "RCPT":
                recipients.append(line.split("<", 1)[1].rstrip(">"))
                writer.write(b"250 2.1.5 OK\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                self.stored.append((list(recipients), data))
                writer.write(self._replies(recipients))
                recipients = []
                if self.hang_up_after_data:
                    await writer.drain()
                    return
            elif verb == "QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"500 5.5.1 unknown command\r\n")
            await writer.drain()

    def _replies(self, recipients: list[str]) -> bytes:
        if self.after_data is not None:
            return self.after_data(recipients)
        return b"".join(f"250 2.0.0 <{a}> saved\r\n".encode() for a in recipients)

    def stored_for(self, needle: bytes) -> int:
        return sum(needle in data for _, data in self.stored)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """``handler`` listening on 127.0.0.1; the port. On the way out every session still
    running is cancelled (its socket aborted) and awaited, then the server is closed."""
    sessions: set[asyncio.Task[object]] = set()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        sessions.add(task)
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            sessions.discard(task)

    server = await asyncio.start_server(session, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for task in list(sessions):
            task.cancel()
        await asyncio.gather(*sessions, return_exceptions=True)
        server.close()
        await server.wait_closed()


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_TIMEOUT", "QUIT_TIMEOUT", "COMMAND_TIMEOUT"):
        monkeypatch.setattr(store_client, name, 1.0)


async def lmtp_send(port: int, recipients: list[str], content: bytes) -> list[StoreReply]:
    return await send_over_protocol(
        lmtp=True,
        host="127.0.0.1",
        port=port,
        helo="mx.chu-a.test",
        mail_from=CLAIRE,
        recipients=recipients,
        content=content,
    )


# -- findings ------------------------------------------------------------------------------


async def test_an_extra_lmtp_reply_cannot_make_the_next_message_delivered_unsent() -> None:
    """A buggy store answers one reply too many after the first message's dot. The
    pooled session keeps that stale ``250``, every later reply is read one command late,
    and the second message's ``DATA`` is "answered" by its RCPT's ``250``: the client
    reports it delivered although it never sent it (a loss: the store never got it)."""
    transactions: list[list[str]] = []

    def one_too_many(recipients: list[str]) -> bytes:
        transactions.append(recipients)
        replies = b"".join(b"250 2.0.0 saved\r\n" for _ in recipients)
        return replies + (b"250 2.0.0 and saved again\r\n" if len(transactions) == 1 else b"")

    store = Store(after_data=one_too_many)
    async with serving(store.session) as port:
        pool = StorePool(StoreTarget(True, "127.0.0.1", port, "mx.chu-a.test"), size=1)
        try:
            await pool.deliver(CLAIRE, [ALICE], numbered(1))
            replies = await pool.deliver(CLAIRE, [ALICE], numbered(2))
        except TemporaryFailure:
            replies = []  # deferred: retried later, nothing lost
        finally:
            await pool.aclose()
    second_stored = store.stored_for(b"<m2@")
    assert not (any(r.delivered for r in replies) and second_stored == 0), (
        f"message 2 reported {replies} but the store holds {second_stored} copy of it"
    )
    assert [r.code for r in replies] == [250] and second_stored == 1
    assert store.connections == 2  # the desynchronised session was dropped, not reset


async def test_a_250_sent_before_the_final_dot_is_not_taken_for_delivery(
    short_timeouts: None,
) -> None:
    """The store answers ``354`` and, in the same breath, ``250 saved``, then never reads
    the message: a reply that exists before the message was sent cannot be the store's
    word on it (RFC 2033 §4.2 / RFC 5321 §4.1.1.4: the reply follows the final dot)."""
    done = asyncio.Event()

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 early LMTP\r\n")
        for answer in (b"250 early\r\n", b"250 ok\r\n", b"250 ok\r\n"):
            await reader.readline()
            writer.write(answer)
        await reader.readline()  # DATA
        writer.write(b"354 go\r\n250 2.0.0 <alice> saved\r\n")
        await writer.drain()
        await done.wait()  # never reads the message
        writer.transport.abort()

    failure = ""
    async with serving(early) as port:
        try:
            replies: list[StoreReply] | None = await lmtp_send(port, [ALICE], numbered(1))
        except TemporaryFailure as error:
            replies, failure = None, str(error)
        finally:
            done.set()
    assert replies is None or not any(r.delivered for r in replies), (
        f"{replies}: 'delivered' although the store answered before reading the message"
    )
    assert "before the message was sent" in failure


async def test_a_reply_line_longer_than_max_line_is_a_temporary_failure() -> None:
    """Docstring: "Every read is bounded: MAX_LINE per line" and "a protocol error ...
    raise[s] TemporaryFailure". A store whose LHLO reply has a 5000-byte line makes
    ``readline`` raise ``ValueError``, which escapes as is."""

    async def long_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 store\r\n")
        await reader.readline()
        writer.write(b"250-" + b"x" * 5000 + b"\r\n250 ok\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async with serving(long_line) as port:
        with pytest.raises(TemporaryFailure):
            await lmtp_send(port, [ALICE], numbered(1))


async def test_a_long_reply_line_defers_the_entry_instead_of_holding_it(
    dev_pki: DevPki, tmp_path: Path, short_timeouts: None
) -> None:
    """The same store, seen from the stage: the entry must be deferred by the retry rules
    (``451 4.4.1``), not put on hold as a "local delivery error: ValueError"."""

    async def long_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 store\r\n")
        await reader.readline()
        writer.write(b"250 " + b"x" * 5000 + b"\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async with serving(long_line) as port:
        async with opened_site(
            tmp_path, dev_pki, inbound=lmtp_to(port), actor="local-delivery"
        ) as site:
            await site.local.add(envelope(ALICE), INBOUND_AGENT, numbered(1))
            delivery = await site.local_delivery()
            [outcome] = await delivery.drain()
    assert outcome.disposition == "deferred"


async def test_starttls_plaintext_injected_after_220_is_not_read_as_a_tls_reply(
    dev_pki: DevPki, monkeypatch: pytest.MonkeyPatch, short_timeouts: None
) -> None:
    """A man in the middle appends clear-text replies to the server's ``220`` for
    STARTTLS (the STARTTLS response injection of CVE-2011-0411's family). The client
    must discard them (RFC 3207 §4.2: nothing learnt before TLS counts); today they stay
    in the stream buffer and answer the commands sent under TLS: the real server refuses
    the recipient (``550``), the client reads the injected ``250`` and says delivered."""
    monkeypatch.setattr(store_client, "is_loopback", lambda host: False)
    files = tls_files(dev_pki, HOSPITAL)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=str(files.ca))
    injected = b"250 injected EHLO\r\n250 mail\r\n250 rcpt\r\n354 data\r\n250 2.0.0 stored\r\n"

    async def mitm(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hospital ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-hospital\r\n250 STARTTLS\r\n")
        await reader.readline()
        writer.write(b"220 2.0.0 ready\r\n" + injected)
        await writer.drain()
        try:
            await writer.start_tls(server_context)
            while line := await reader.readline():  # the real server, under TLS
                verb = line.split(b" ", 1)[0].upper().strip()
                answers = {b"EHLO": b"250 hospital\r\n", b"MAIL": b"250 ok\r\n"}
                answers |= {b"RCPT": b"550 5.1.1 no such user\r\n", b"QUIT": b"221 bye\r\n"}
                writer.write(answers.get(verb, b"554 5.5.1 no valid recipients\r\n"))
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    failure = ""
    async with serving(mitm) as port:
        try:
            replies: list[StoreReply] | None = await send_over_protocol(
                lmtp=False,
                host="127.0.0.1",
                port=port,
                helo="mx.chu-a.test",
                mail_from=CLAIRE,
                recipients=[ALICE],
                content=numbered(1),
                tls_context=_named(client_context),
            )
        except TemporaryFailure as error:
            replies, failure = None, str(error)
    assert replies is None or not any(r.delivered for r in replies), (
        f"{replies}: clear-text bytes injected before TLS were taken for the server's word"
    )
    assert "outside TLS" in failure


def _named(context: ssl.SSLContext) -> ssl.SSLContext:
    """The dev PKI's hospital certificate names ``hospital.chu-a.test``; the client dials
    127.0.0.1, so only the name check is relaxed (the chain is still verified)."""
    context.check_hostname = False
    return context


def test_a_local_part_too_long_for_a_file_name_is_a_permanent_failure(tmp_path: Path) -> None:
    """Docstring: "a local part that cannot name a directory ... raises
    ``PermanentFailure``" (-> 5.1.3). A 300-byte local part cannot (NAME_MAX 255), but
    raises ``OSError`` (ENAMETOOLONG) -> 451, deferred again and again until expiry."""
    with pytest.raises(PermanentFailure):
        deliver_to_maildir(tmp_path / "mail", "a" * 300 + "@chu-a.test", numbered(1))


async def test_a_store_answering_data_with_250_gets_no_delivery_without_the_message(
    short_timeouts: None,
) -> None:
    """A buggy store answers ``DATA`` with ``250`` instead of ``354``: nothing of the
    message was sent, so nothing may be reported delivered (RFC 5321 §4.3.2: DATA is
    answered 354, or refused 4xx/5xx)."""

    async def no_354(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 store\r\n")
        for answer in (b"250 store\r\n", b"250 ok\r\n", b"250 ok\r\n", b"250 2.0.0 ok\r\n"):
            await reader.readline()
            writer.write(answer)
            await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async with serving(no_354) as port:
        try:
            replies: list[StoreReply] | None = await lmtp_send(port, [ALICE], numbered(1))
        except TemporaryFailure:
            replies = None
    assert replies is None or not any(r.delivered for r in replies), (
        f"{replies}: 'delivered' although the message was never sent"
    )


# -- tried and held (cheap regression tests) -------------------------------------------------


async def test_fewer_lmtp_replies_then_a_dropped_connection_defers_everyone(
    short_timeouts: None,
) -> None:
    """Two accepted recipients, one reply after the dot, then the store hangs up: a
    ``TemporaryFailure`` (both retried: a duplicate at worst, nothing lost)."""
    store = Store(after_data=lambda recipients: b"250 2.0.0 saved\r\n", hang_up_after_data=True)
    async with serving(store.session) as port:
        with pytest.raises(TemporaryFailure, match="closed"):
            await lmtp_send(port, [ALICE, BRUNO], numbered(1))
    assert store.stored_for(b"<m1@") == 1


async def test_fewer_lmtp_replies_on_an_open_connection_time_out(short_timeouts: None) -> None:
    store = Store(after_data=lambda recipients: b"250 2.0.0 saved\r\n")
    async with serving(store.session) as port:
        with pytest.raises(TemporaryFailure, match="TimeoutError"):
            await lmtp_send(port, [ALICE, BRUNO], numbered(1))


async def test_a_multi_line_reply_with_mixed_codes_is_a_temporary_failure() -> None:
    store = Store(after_data=lambda r: b"250-2.0.0 saved\r\n450 4.2.0 not really\r\n" * len(r))
    async with serving(store.session) as port:
        with pytest.raises(TemporaryFailure, match="ProtocolError"):
            await lmtp_send(port, [ALICE], numbered(1))


async def test_a_4xx_and_a_2xx_after_data_are_kept_per_recipient_in_rcpt_order() -> None:
    def mixed(recipients: list[str]) -> bytes:
        return b"452 4.2.2 over quota\r\n250 2.0.0 saved\r\n"

    store = Store(after_data=mixed)
    async with serving(store.session) as port:
        replies = await lmtp_send(port, [ALICE, BRUNO], numbered(1))
    assert [(r.code, r.delivered) for r in replies] == [(452, False), (250, True)]


def test_a_maildir_new_on_another_file_system_fails_temporarily_and_leaves_no_temp(
    tmp_path: Path,
) -> None:
    """``new/`` is a symlink to tmpfs: ``rename`` fails with EXDEV, the temporary file is
    removed and the caller gets an ``OSError`` (451, retried)."""
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("this test needs /dev/shm on another file system than the temp dir")
    mailbox = tmp_path / "mail" / "alice.martin"
    for sub in ("tmp", "cur"):
        (mailbox / sub).mkdir(parents=True)
    elsewhere = other / f"mv-hunt-{os.getpid()}"
    elsewhere.mkdir()
    try:
        (mailbox / "new").symlink_to(elsewhere)
        with pytest.raises(OSError) as caught:
            deliver_to_maildir(tmp_path / "mail", ALICE, numbered(1))
        assert caught.value.errno == errno.EXDEV
        assert list((mailbox / "tmp").iterdir()) == [] and list(elsewhere.iterdir()) == []
    finally:
        for leftover in elsewhere.iterdir():
            leftover.unlink()
        elsewhere.rmdir()


def test_a_full_disk_while_writing_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as caught:
        deliver_to_maildir(tmp_path / "mail", ALICE, numbered(1))
    assert caught.value.errno == errno.ENOSPC
    mailbox = tmp_path / "mail" / "alice.martin"
    assert list((mailbox / "tmp").iterdir()) == [] and list((mailbox / "new").iterdir()) == []


@pytest.mark.parametrize("local_part", ["..", "../../etc", "a/../..", "..\\x", ".\x00"])
def test_a_traversing_local_part_writes_nothing(tmp_path: Path, local_part: str) -> None:
    root = tmp_path / "mail"
    with pytest.raises(PermanentFailure):
        deliver_to_maildir(root, f"{local_part}@chu-a.test", numbered(1))
    assert list(tmp_path.iterdir()) == []


async def test_content_with_bare_line_ends_and_a_lone_dot_cannot_smuggle_a_command() -> None:
    """Decrypted content comes from outside: a bare-LF ``.`` line, a CRLF ``.`` line and
    LMTP commands after them stay inside the one message the store receives."""
    store = Store()
    smuggler = (
        b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@x.test>\r\n"
        b"RCPT TO:<bruno.petit@chu-a.test>\r\n.\r\nDATA\r\n"
    )
    async with serving(store.session) as port:
        replies = await lmtp_send(port, [ALICE], smuggler)
    assert [r.code for r in replies] == [250]
    [(recipients, data)] = store.stored
    assert recipients == [ALICE] and b"..\r\nMAIL FROM:<evil@x.test>" in data


async def test_a_copy_larger_than_the_store_size_bounces_with_a_dsn(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """The store's ``552 5.3.4`` after the dot (RFC 1870 §6.2: permanent) fails the
    recipient and tells the sender; nothing is retried for ever."""
    store = Store(after_data=lambda r: b"552 5.3.4 message too big for system\r\n" * len(r))
    async with serving(store.session) as port:
        async with opened_site(
            tmp_path, dev_pki, inbound=lmtp_to(port), actor="local-delivery"
        ) as site:
            await site.local.add(envelope(ALICE), INBOUND_AGENT, numbered(1))
            delivery = await site.local_delivery()
            [outcome] = await delivery.drain()
    assert outcome.disposition == "bounced" and outcome.dsn is not None
    assert outcome.replies == ((ALICE, 552, "5.3.4 message too big for system"),)
