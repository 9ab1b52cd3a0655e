"""The IMAP fetcher (``gateway.inbound.imap_fetch``) against a real Dovecot over IMAPS.

Messages are put in with LMTP (``dovecot.lmtp_send``), the fetcher reads them over
IMAPS verified with the development PKI, and the test checks the INBOUND queue (claimed
entries: envelope, origin, content) and the server's ``\\Seen`` flags (read back with
``imaplib``). The last tests are sans-IO unit tests of the small parsers.
"""

from __future__ import annotations

import asyncio
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.model import ImapFetch, TlsSection, TrustSection
from gateway.inbound.imap_fetch import ImapFetcher, InboundSink, run_imap_worker, tls_context
from gateway.inbound.imap_parse import (
    ImapFetchError,
    ImapLoginError,
    MailboxUrl,
    parse_fetched_body,
    parse_search,
    parse_uidnext,
    parse_uidvalidity,
    quote_astring,
    return_path,
)
from gateway.inbound.imap_state import FetchState, state_file_name
from gateway.pki.dev import DevPki
from gateway.spool import (
    INBOUND,
    Claimed,
    Envelope,
    Origin,
    Queue,
    QueueId,
    Spool,
    SpoolWriteError,
)
from tests.peers.dovecot import DovecotInstance
from tests.peers.fixtures import ca_bundle
from tests.relay.configs import write_site
from tests.spool.support import RecordingTrail

USER = "alice@chu-a.test"
DELIVER_TO = "dr.durand@chu-a.test"
BOUND = 60.0  # an upper bound on waiting for an event, never a speed assertion


def letter(number: int) -> bytes:
    return (
        f"From: bob@clinique-b.test\r\nTo: {USER}\r\nSubject: lettre {number}\r\n"
        f"Message-ID: <m{number}@clinique-b.test>\r\n\r\nBonjour {number}\r\n"
    ).encode()


def put(dovecot: DovecotInstance, number: int) -> None:
    result = dovecot.lmtp_send("bob@clinique-b.test", [USER], letter(number))
    assert result.accepted() == [USER]


def seen_and_unseen(dovecot: DovecotInstance, cafile: Path) -> tuple[int, int]:
    """How many messages of the INBOX are ``\\Seen`` and how many are not."""
    client = dovecot.imaps(cafile)
    client.login(USER, dovecot.users[USER])
    client.select("INBOX", readonly=True)
    counts = tuple(len(client.search(None, key)[1][0].split()) for key in ("SEEN", "UNSEEN"))
    client.logout()
    return counts[0], counts[1]


def mark_seen(dovecot: DovecotInstance, cafile: Path, number: str) -> None:
    client = dovecot.imaps(cafile)
    client.login(USER, dovecot.users[USER])
    client.select("INBOX")
    client.store(number, "+FLAGS", r"(\Seen)")
    client.logout()


async def drain(queue: Queue) -> list[tuple[Claimed, bytes]]:
    """Claim every entry of the queue, with its content."""
    entries = []
    while (entry := await queue.claim()) is not None:
        entries.append((entry, b"".join([chunk async for chunk in queue.content(entry)])))
    return entries


@pytest.fixture
def cafile(dev_pki: DevPki) -> Path:
    return ca_bundle(dev_pki)


@pytest.fixture
def context(cafile: Path) -> ssl.SSLContext:
    tls = TlsSection(certificate=None, private_key=None, min_version="1.2", ciphers="")
    trust = TrustSection(
        anchors=(cafile,), intermediates=(), crls=(), revocation="off", liste_blanche=None
    )
    return tls_context(tls, trust)


@pytest.fixture
def fetch(dovecot: DovecotInstance, tmp_path: Path) -> ImapFetch:
    password_file = tmp_path / "imap.password"
    password_file.write_text(dovecot.users[USER] + "\n", encoding="utf-8")
    return ImapFetch(
        url=f"imaps://{dovecot.host}:{dovecot.imaps_port}/INBOX",
        user=USER,
        password_file=password_file,
        deliver_to_address=DELIVER_TO,
    )


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    async with Spool(
        tmp_path / "spool", audit=RecordingTrail(), actor="imap", max_message_size=1 << 20
    ) as spool:
        yield spool


def fetcher_for(
    fetch: ImapFetch, queue: InboundSink, state_dir: Path, context: ssl.SSLContext, **kwargs: float
) -> ImapFetcher:
    return ImapFetcher(fetch, queue=queue, state_dir=state_dir, ca=context, **kwargs)


# -- against Dovecot ---------------------------------------------------------------------


async def test_new_messages_are_queued_marked_seen_and_not_fetched_again(
    dovecot: DovecotInstance,
    fetch: ImapFetch,
    spool: Spool,
    context: ssl.SSLContext,
    cafile: Path,
    tmp_path: Path,
) -> None:
    put(dovecot, 1)
    put(dovecot, 2)
    queue = spool.queue(INBOUND)
    state_dir = tmp_path / "state"

    assert await fetcher_for(fetch, queue, state_dir, context).fetch_once() == 2

    entries = await drain(queue)
    assert sorted(content.split(b"Subject: ")[1][:9] for _, content in entries) == [
        b"lettre 1\r",
        b"lettre 2\r",
    ]
    for entry, content in entries:
        assert content.startswith(b"Return-Path: <bob@clinique-b.test>")
        assert entry.record.envelope.mail_from == "bob@clinique-b.test"
        assert entry.record.envelope.addresses == (DELIVER_TO,)
        assert entry.record.origin.listener == f"imap:{USER}@127.0.0.1"
    assert seen_and_unseen(dovecot, cafile) == (2, 0)
    state_file = state_dir / state_file_name(fetch)
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    state = FetchState.from_json(state_file.read_bytes())
    assert state is not None and state.last_uid == 2

    restarted = fetcher_for(fetch, queue, state_dir, context)
    assert await restarted.fetch_once() == 0
    assert await drain(queue) == []


class NotifyingQueue:
    """The real queue, plus a note of each id it accepted (to wait for one)."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.added: asyncio.Queue[QueueId] = asyncio.Queue()

    async def add(self, envelope: Envelope, origin: Origin, content: bytes) -> QueueId:
        queue_id = await self.queue.add(envelope, origin, content)
        self.added.put_nowait(queue_id)
        return queue_id


async def test_a_message_arriving_during_idle_is_fetched_without_polling(
    dovecot: DovecotInstance,
    fetch: ImapFetch,
    spool: Spool,
    context: ssl.SSLContext,
    cafile: Path,
    tmp_path: Path,
) -> None:
    put(dovecot, 1)
    put(dovecot, 2)
    sink = NotifyingQueue(spool.queue(INBOUND))
    # polling once an hour: only IDLE can bring the third message within the bound
    fetcher = fetcher_for(fetch, sink, tmp_path / "state", context, poll_interval=3600.0)
    stop = asyncio.Event()
    task = asyncio.create_task(fetcher.run(stop))
    try:
        for _ in range(2):
            await asyncio.wait_for(sink.added.get(), BOUND)
        await asyncio.wait_for(fetcher.idling.wait(), BOUND)
        await asyncio.to_thread(put, dovecot, 3)
        third = await asyncio.wait_for(sink.added.get(), BOUND)
    finally:
        stop.set()
        await asyncio.wait_for(task, BOUND)
    entries = {entry.queue_id: content for entry, content in await drain(sink.queue)}
    assert b"Subject: lettre 3\r\n" in entries[third]
    assert len(entries) == 3
    assert seen_and_unseen(dovecot, cafile) == (3, 0)


async def test_wrong_password_is_a_clear_error_and_queues_nothing(
    dovecot: DovecotInstance,
    fetch: ImapFetch,
    spool: Spool,
    context: ssl.SSLContext,
    cafile: Path,
    tmp_path: Path,
) -> None:
    put(dovecot, 1)
    fetch.password_file.write_text("not-the-password\n", encoding="utf-8")
    queue = spool.queue(INBOUND)

    with pytest.raises(ImapLoginError, match=f"{USER} at 127.0.0.1:.*login refused"):
        await fetcher_for(fetch, queue, tmp_path / "state", context).fetch_once()

    assert await drain(queue) == []
    assert seen_and_unseen(dovecot, cafile) == (0, 1)


async def test_the_loop_retries_after_a_refused_login_and_rereads_the_password(
    dovecot: DovecotInstance,
    fetch: ImapFetch,
    spool: Spool,
    context: ssl.SSLContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a few seconds: Dovecot seems to delay the next login from an address that just
    # failed one (its auth penalty), whatever our back-off
    put(dovecot, 1)
    password = dovecot.users[USER]
    fetch.password_file.write_text("not-the-password\n", encoding="utf-8")
    sink = NotifyingQueue(spool.queue(INBOUND))
    backoff = {"backoff_first": 0.5, "backoff_max": 0.5}
    fetcher = fetcher_for(fetch, sink, tmp_path / "state", context, **backoff)
    stop = asyncio.Event()
    task = asyncio.create_task(fetcher.run(stop))
    try:
        async with asyncio.timeout(BOUND):
            while not any(r.getMessage() == "imap.login_refused" for r in caplog.records):
                await asyncio.sleep(0.02)
        assert await drain(sink.queue) == []
        fetch.password_file.write_text(password + "\n", encoding="utf-8")
        await asyncio.wait_for(sink.added.get(), BOUND)
    finally:
        stop.set()
        await asyncio.wait_for(task, BOUND)
    assert all(password not in record.getMessage() for record in caplog.records)


class FailingQueue:
    """A queue whose commit always fails, as a full or broken disk would make it."""

    def __init__(self) -> None:
        self.calls = 0

    async def add(self, envelope: Envelope, origin: Origin, content: bytes) -> QueueId:
        self.calls += 1
        raise SpoolWriteError("injected: fsync failed")


async def test_a_message_whose_commit_fails_is_not_marked_seen_and_comes_again(
    dovecot: DovecotInstance,
    fetch: ImapFetch,
    spool: Spool,
    context: ssl.SSLContext,
    cafile: Path,
    tmp_path: Path,
) -> None:
    put(dovecot, 1)
    state_dir = tmp_path / "state"
    failing = FailingQueue()

    with pytest.raises(SpoolWriteError):
        await fetcher_for(fetch, failing, state_dir, context).fetch_once()

    assert failing.calls == 1
    assert seen_and_unseen(dovecot, cafile) == (0, 1)
    assert not (state_dir / state_file_name(fetch)).exists()
    queue = spool.queue(INBOUND)
    assert await fetcher_for(fetch, queue, state_dir, context).fetch_once() == 1
    assert len(await drain(queue)) == 1


async def test_after_a_uidvalidity_change_only_unseen_messages_are_fetched(
    dovecot: DovecotInstance,
    fetch: ImapFetch,
    spool: Spool,
    context: ssl.SSLContext,
    cafile: Path,
    tmp_path: Path,
) -> None:
    put(dovecot, 1)
    put(dovecot, 2)
    await asyncio.to_thread(mark_seen, dovecot, cafile, "1")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    stale = FetchState(uidvalidity=1, last_uid=999)  # Dovecot's UIDVALIDITY is a timestamp
    (state_dir / state_file_name(fetch)).write_bytes(stale.to_json())
    queue = spool.queue(INBOUND)

    assert await fetcher_for(fetch, queue, state_dir, context).fetch_once() == 1

    [(_, content)] = await drain(queue)
    assert b"Subject: lettre 2\r\n" in content
    state = FetchState.from_json((state_dir / state_file_name(fetch)).read_bytes())
    assert state is not None and state.uidvalidity != 1 and state.last_uid == 2


async def test_a_server_certificate_outside_the_anchors_is_refused(
    dovecot: DovecotInstance, fetch: ImapFetch, spool: Spool, tmp_path: Path
) -> None:
    put(dovecot, 1)
    other = ssl.create_default_context()  # system anchors only: the dev PKI is not there
    queue = spool.queue(INBOUND)

    with pytest.raises(ssl.SSLCertVerificationError):
        await fetcher_for(fetch, queue, tmp_path / "state", other).fetch_once()

    assert await drain(queue) == []


async def test_the_worker_runs_a_fetcher_per_configured_mailbox(
    dovecot: DovecotInstance, dev_pki: DevPki, cafile: Path, tmp_path: Path
) -> None:
    put(dovecot, 1)
    password_file = tmp_path / "imap.password"
    password_file.write_text(dovecot.users[USER], encoding="utf-8")
    password_file.chmod(0o600)
    mailbox = f"""
[[inbound.imap_fetch]]
url = "imaps://{dovecot.host}:{dovecot.imaps_port}/INBOX"
user = "{USER}"
password_file = "{password_file}"
deliver_to_address = "{DELIVER_TO}"
"""
    config = write_site(tmp_path, dev_pki, smime=mailbox)
    stop = asyncio.Event()
    task = asyncio.create_task(run_imap_worker(config, stop))
    try:
        async with asyncio.timeout(BOUND):
            while await asyncio.to_thread(seen_and_unseen, dovecot, cafile) != (1, 0):
                await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(task, BOUND)
    async with Spool(
        config.gateway.spool_dir, audit=RecordingTrail(), actor="test", max_message_size=1 << 20
    ) as spool:
        [(entry, content)] = await drain(spool.queue(INBOUND))
    assert entry.record.envelope.addresses == (DELIVER_TO,)
    assert b"Subject: lettre 1\r\n" in content
    assert len(list((config.gateway.data_dir / "imap").glob("imap-*.json"))) == 1


# -- sans-IO parts -----------------------------------------------------------------------


def test_fetch_literal_is_found_by_uid_before_or_after_it() -> None:
    literal = bytearray(b"Subject: x\r\n\r\nbody\r\n")
    before = [b"1 FETCH (UID 7 BODY[] {20}", literal, b")", b"Fetch completed"]
    after = [b"1 FETCH (BODY[] {20}", literal, b" UID 7)", b"Fetch completed"]
    other = [b"2 FETCH (FLAGS (\\Seen))", b"1 FETCH (UID 8 BODY[] {20}", literal, b")", b"ok"]
    no_uid = [b"1 FETCH (BODY[] {20}", literal, b")", b"ok"]
    no_body = [b"1 FETCH (UID 7 FLAGS (\\Seen))", b"ok"]
    assert parse_fetched_body(before, 7) == bytes(literal)
    assert parse_fetched_body(after, 7) == bytes(literal)
    # never "expunged" (None) when the answer is about another message or lacks the body
    with pytest.raises(ImapFetchError, match="body of UID 8"):
        parse_fetched_body(other, 7)
    with pytest.raises(ImapFetchError, match="body of no UID"):
        parse_fetched_body(no_uid, 7)
    with pytest.raises(ImapFetchError, match="without its body"):
        parse_fetched_body(no_body, 7)
    flags_of_another = [b"3 FETCH (UID 9 FLAGS (\\Seen))", b"ok"]
    assert parse_fetched_body(flags_of_another, 7) is None
    assert parse_fetched_body([b"Fetch completed"], 7) is None


def test_search_and_select_answers() -> None:
    assert parse_search([b"4 3 12", b"Search completed (0.001 secs)."]) == [3, 4, 12]
    assert parse_search([b"SEARCH 5", b"done"]) == [5]
    assert parse_search([b"Search completed."]) == []
    lines = [b"FLAGS ()", b"OK [UIDVALIDITY 1732800000] UIDs valid", b"[READ-WRITE] ok"]
    assert parse_uidvalidity(lines) == 1732800000
    assert parse_uidnext(lines) is None
    assert parse_uidnext([b"OK [UIDNEXT 42] Predicted next UID", b"ok"]) == 42
    assert parse_uidnext([b"OK [UIDNEXT 4294967296] too big", b"ok"]) is None


def test_return_path_gives_the_address_or_the_null_sender() -> None:
    assert return_path(b"Return-Path: <a@b.test>\r\nFrom: c@d.test\r\n\r\nx") == "a@b.test"
    assert return_path(b"Return-Path: <>\r\n\r\nx") == ""
    assert return_path(b"From: c@d.test\r\n\r\nReturn-Path: <a@b.test>\r\n") == ""
    assert return_path(b"Return-Path: <not an address>\r\n\r\n") == ""


def test_state_file_and_url_parsing() -> None:
    assert FetchState.from_json(FetchState(3, 9).to_json()) == FetchState(3, 9)
    assert FetchState(3, 9).uids_went_back(3, 9) and FetchState(3, 9).uids_went_back(3, 2)
    assert not FetchState(3, 9).uids_went_back(3, 10)
    assert not FetchState(3, 9).uids_went_back(3, None)  # no UIDNEXT: nothing to check
    assert not FetchState(3, 9).uids_went_back(4, 2)  # a new UIDVALIDITY is checked apart
    for bad in (b"", b"{}", b'{"uidvalidity": -1, "last_uid": 0}', b'{"uidvalidity": "1"}'):
        assert FetchState.from_json(bad) is None
    assert MailboxUrl.parse("imaps://imap.x.test/Boite%20MSS") == MailboxUrl(
        True, "imap.x.test", 993, "Boite MSS"
    )
    assert MailboxUrl.parse("imap://127.0.0.1:1143").mailbox == "INBOX"
    assert quote_astring("INBOX") == "INBOX"
    assert quote_astring('Boite "MSS"') == '"Boite \\"MSS\\""'
    assert quote_astring("CHU\\alice") == '"CHU\\\\alice"'
