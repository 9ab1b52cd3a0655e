"""The IMAP fetcher: pull mail from remote mailboxes into the INBOUND queue (issue 7 item 4).

Role: for each ``[[inbound.imap_fetch]]`` (a mailbox a partner network keeps for us),
``ImapFetcher.run`` connects over IMAPS (RFC 8314 implicit TLS; ``imap://`` only to
loopback, as the config rules allow), logs in (RFC 9051 §6.2.3 LOGIN, the password read
from ``password_file``), SELECTs the mailbox and hands every new message to the INBOUND
queue, where the inbound agent processes it like mail received over SMTP. Then it waits
for more with IDLE (RFC 2177) when the server offers it, else it polls.

Protocol steps for each new message (RFC 9051 §6.4.9 UID, §6.4.5 FETCH, §6.4.6 STORE):

1. ``UID SEARCH UID <last+1>:*`` lists the new UIDs (a range ``n:*`` also names the
   highest UID when ``n`` is above it, RFC 9051 §6.4.4: those are filtered out);
2. ``UID FETCH <uid> (UID BODY.PEEK[])`` reads it without setting ``\\Seen``;
3. ``Queue.add`` writes it to the INBOUND stage and returns only after the fsyncs
   (``gateway.spool``: "250 means on disk"); envelope MAIL FROM = the ``Return-Path``
   of the message (``""`` if there is none or it is not an address), RCPT TO =
   ``deliver_to_address``; ``Origin.listener = "imap:<user>@<host>"``;
4. only then ``UID STORE <uid> +FLAGS.SILENT (\\Seen)``;
5. and then the UID is recorded in the state file.

State: ``<state_dir>/imap-<hash>.json`` (one per user/host/port/mailbox; 0600, written
atomically with fsync by ``gateway.pki.files.replace_file``) holds the mailbox's
UIDVALIDITY and the last UID handled (``gateway.inbound.imap_state``).

Decisions (never lose, at most duplicate; ARCHITECTURE quality bar):

- With a state whose UIDVALIDITY matches the server's, every UID above the last one
  handled is fetched, ``\\Seen`` or not: a crash after step 3 or 4 re-fetches the message
  (a duplicate), never skips it.
- Without a valid state (first run, or UIDVALIDITY changed: the server renumbered the
  mailbox, RFC 9051 §2.3.1.1, so the old UIDs mean nothing) the fetcher starts from the
  beginning of the mailbox but skips messages already ``\\Seen``: the fetcher sets
  ``\\Seen`` only after the spool commit, so a seen message was handed over already.
  This is why the mailbox must be dedicated to the gateway: a person reading it there
  would mark messages seen (a documented requirement of ``[[inbound.imap_fetch]]``).
- A message larger than ``[delivery] max_message_size`` (``MessageTooLarge``) can never
  be queued: it is logged as an error, left unseen on the server for the operator, and
  passed over, so it does not block the mailbox. Every other spool error is temporary:
  the session ends, nothing is marked, and the fetcher reconnects after a back-off.
- Errors (network, TLS, timeout, a refused login, a NO/BAD answer) end the session; the
  fetcher reconnects after a back-off (1 s doubling to 5 min; reset after a session that
  logged in). A refused login is logged as ``imap.login_refused`` (never the password).
- Command timeout: ``timeout`` (default 300 s), not aioimaplib's 10 s default, which a
  large FETCH on a slow link passes. For FETCH it is an inactivity timer (aioimaplib
  restarts it on every chunk received), so a big message that keeps arriving is not cut.
- IDLE is renewed every ``idle_renew`` (25 min, below the 29 min of RFC 2177 §3); any
  server push ends the IDLE and the new UIDs are fetched at once.

Library: aioimaplib (GPL-3.0-only, a licensing point for whoever ships Missive) does the
protocol; it returns raw response lines, so the small parsers (UIDVALIDITY, SEARCH,
the FETCH literal, Return-Path) are hand-written, sans-IO functions, in
``gateway.inbound.imap_parse``. It holds each FETCH
literal whole in memory, so memory per fetcher is bounded by the largest message in the
mailbox, not by our spool limit.

Security: the server certificate is verified against the configured trust anchors and
the host name of the URL (``tls_context``: the relay's ``client_context`` with
CERT_REQUIRED, plus OpenSSL's host name check; like the relay, it presents the ``[tls]``
certificate as client certificate when one is configured); the password is read at
each login, never logged (aioimaplib scrubs it from its debug log). Trust level: holds
no private key; writes only to the INBOUND stage and its state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import aioimaplib

from gateway.config import Config
from gateway.config.model import ImapFetch, TlsSection, TrustSection
from gateway.inbound.imap_parse import (
    ImapFetchError,
    ImapLoginError,
    MailboxUrl,
    origin_listener,
    parse_fetched_body,
    parse_search,
    parse_uidvalidity,
    quote_mailbox,
    return_path,
)
from gateway.inbound.imap_state import FetchState, state_file_name
from gateway.log import get_logger
from gateway.pki.files import PRIVATE_FILE_MODE, ensure_private_dir, replace_file
from gateway.spool import (
    INBOUND,
    Envelope,
    MessageTooLarge,
    Origin,
    QueueId,
    Recipient,
    Spool,
)

DEFAULT_TIMEOUT = 300.0
DEFAULT_POLL_INTERVAL = 60.0
IDLE_RENEW = 25 * 60.0  # RFC 2177 §3: re-issue IDLE at least every 29 minutes
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
LOGOUT_TIMEOUT = 5.0
STATE_SUBDIR = "imap"
ACTOR = "imap"

_log = get_logger("imap")


class InboundSink(Protocol):
    """What the fetcher needs of the INBOUND queue (``gateway.spool.Queue`` is one)."""

    async def add(self, envelope: Envelope, origin: Origin, content: bytes) -> QueueId: ...


def tls_context(tls: TlsSection, trust: TrustSection) -> ssl.SSLContext:
    """IMAPS client context: chain checked against ``[trust]`` anchors (+ intermediates)
    and the host name checked (RFC 6125 via OpenSSL), TLS >= ``[tls] min_version``."""
    from gateway.relay.tlsclient import client_context  # the one place contexts are built

    context = client_context(tls, trust, verify=True)
    context.check_hostname = True
    return context


class ImapFetcher:
    """One ``[[inbound.imap_fetch]]`` mailbox fetched into the INBOUND queue (module doc)."""

    def __init__(
        self,
        fetch: ImapFetch,
        *,
        queue: InboundSink,
        state_dir: Path,
        ca: ssl.SSLContext,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        idle_renew: float = IDLE_RENEW,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.fetch = fetch
        self.url = MailboxUrl.parse(fetch.url)
        self.queue = queue
        self.state_path = state_dir / state_file_name(fetch)
        self.ca = ca
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.idle_renew = idle_renew
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.origin = Origin(
            origin_listener(fetch.user, self.url.host), client_address=self.url.host
        )
        self.envelope_to = (Recipient(fetch.deliver_to_address),)
        self.idling = asyncio.Event()  # set while an IDLE is in progress (tests, metrics)
        self._logged_in = False

    # -- the long-running loop ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch until ``stop`` is set; reconnect with back-off after each error."""
        delay = self.backoff_first
        while not stop.is_set():
            self._logged_in = False
            try:
                await self._session(stop, until_stopped=True)
                continue
            except ImapLoginError as error:
                _log.error("imap.login_refused", user=self.fetch.user, error=str(error))
                delay = self.backoff_max
            except Exception as error:  # noqa: BLE001 - network, TLS, protocol, spool, bug: retried
                _log.warning("imap.session_failed", user=self.fetch.user, error=_describe(error))
                if self._logged_in:  # it worked for a while: start the back-off again
                    delay = self.backoff_first
            _log.info("imap.reconnect", user=self.fetch.user, delay=f"{delay:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, self.backoff_max)

    async def fetch_once(self) -> int:
        """One session: connect, log in, fetch what is new, log out. Returns how many
        messages were queued. Raises ``ImapLoginError``, ``ImapFetchError``, ..."""
        return await self._session(asyncio.Event(), until_stopped=False)

    # -- one session ------------------------------------------------------------------------

    async def _session(self, stop: asyncio.Event, *, until_stopped: bool) -> int:
        client = await self._connect()
        try:
            await self._login(client)
            uidvalidity = await self._select(client)
            queued = await self._fetch_new(client, uidvalidity)
            if not until_stopped:
                return queued
            idle = client.has_capability("IDLE")
            _log.info("imap.watching", user=self.fetch.user, mode="idle" if idle else "poll")
            while not stop.is_set():
                if idle:
                    await self._idle(client, stop)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_interval)
                if not stop.is_set():
                    queued += await self._fetch_new(client, uidvalidity)
            return queued
        finally:
            await self._close(client)

    async def _connect(self) -> aioimaplib.IMAP4:
        url = self.url
        if url.tls:
            client = aioimaplib.IMAP4_SSL(
                url.host, url.port, timeout=self.timeout, ssl_context=self.ca
            )
        else:
            client = aioimaplib.IMAP4(url.host, url.port, timeout=self.timeout)
        try:
            await client.wait_hello_from_server()
        except BaseException:
            await self._close(client)
            raise
        return client

    async def _login(self, client: aioimaplib.IMAP4) -> None:
        password = await asyncio.to_thread(self._read_password)
        response = await client.login(self.fetch.user, password)
        if response.result != "OK":
            raise ImapLoginError(
                f"{self.fetch.user} at {self.url.host}:{self.url.port}: login refused "
                f"({_text(response.lines)})"
            )
        await self._command(client.protocol.capability())  # post-login CAPABILITY
        self._logged_in = True
        _log.info("imap.logged_in", user=self.fetch.user, host=self.url.host)

    def _read_password(self) -> str:
        try:
            text = self.fetch.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as error:
            raise ImapFetchError(f"{self.fetch.password_file}: cannot read: {error}") from None
        return text.rstrip("\r\n")

    async def _select(self, client: aioimaplib.IMAP4) -> int:
        response = await client.select(quote_mailbox(self.url.mailbox))
        _check(response, f"SELECT {self.url.mailbox}")
        return parse_uidvalidity(response.lines)

    async def _fetch_new(self, client: aioimaplib.IMAP4, uidvalidity: int) -> int:
        state = await asyncio.to_thread(self._load_state)
        valid = state is not None and state.uidvalidity == uidvalidity
        if state is not None and not valid:
            _log.warning(
                "imap.uidvalidity_changed",
                user=self.fetch.user,
                old=state.uidvalidity,
                new=uidvalidity,
            )
        last_uid = state.last_uid if valid and state is not None else 0
        criteria = [f"UID {last_uid + 1}:*"] + ([] if valid else ["UNSEEN"])
        response = await self._command(client.uid_search(*criteria, charset=None))
        _check(response, "UID SEARCH")
        queued = 0
        for uid in (uid for uid in parse_search(response.lines) if uid > last_uid):
            if await self._fetch_one(client, uid):
                queued += 1
            await asyncio.to_thread(self._save_state, FetchState(uidvalidity, uid))
        return queued

    async def _fetch_one(self, client: aioimaplib.IMAP4, uid: int) -> bool:
        """Queue message ``uid`` then mark it seen; False if it was passed over."""
        response = await client.uid("fetch", str(uid), "(UID BODY.PEEK[])")
        _check(response, f"UID FETCH {uid}")
        message = parse_fetched_body(response.lines, uid)
        if message is None:  # expunged meanwhile
            _log.info("imap.message_gone", user=self.fetch.user, uid=uid)
            return False
        envelope = Envelope(return_path(message), self.envelope_to)
        try:
            queue_id = await self.queue.add(envelope, self.origin, message)
        except MessageTooLarge as error:
            _log.error("imap.message_too_large", user=self.fetch.user, uid=uid, error=str(error))
            return False
        response = await self._command(client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Seen)"))
        _check(response, f"UID STORE {uid}")
        _log.info("imap.fetched", user=self.fetch.user, uid=uid, queue_id=queue_id)
        return True

    async def _idle(self, client: aioimaplib.IMAP4, stop: asyncio.Event) -> None:
        """IDLE until the server pushes something, ``idle_renew`` passes or ``stop``."""
        idle = await client.idle_start(timeout=self.idle_renew)
        self.idling.set()
        try:
            push = asyncio.ensure_future(client.wait_server_push(timeout=self.idle_renew + 60))
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({push, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (push, stopping):
                    task.cancel()
                await asyncio.gather(push, stopping, return_exceptions=True)
        finally:
            self.idling.clear()
        client.idle_done()
        response = await self._command(idle)
        _check(response, "IDLE")

    async def _command(self, awaitable: Any) -> Any:
        """Await one IMAP command within the command timeout (aioimaplib leaves some
        commands, STORE and CAPABILITY among them, without one)."""
        return await asyncio.wait_for(awaitable, self.timeout)

    async def _close(self, client: aioimaplib.IMAP4) -> None:
        """LOGOUT politely if logged in, then drop the connection whatever its state."""
        protocol = client.protocol
        if protocol.state in (aioimaplib.AUTH, aioimaplib.SELECTED):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(protocol.logout(), LOGOUT_TIMEOUT)
        if protocol.transport is not None:
            protocol.transport.close()
        pending = [client._client_task, *client.tasks, *protocol.tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- state file -------------------------------------------------------------------------

    def _load_state(self) -> FetchState | None:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        state = FetchState.from_json(data)
        if state is None:
            _log.warning("imap.state_unreadable", path=str(self.state_path))
        return state

    def _save_state(self, state: FetchState) -> None:
        ensure_private_dir(self.state_path.parent)
        replace_file(self.state_path, state.to_json(), PRIVATE_FILE_MODE)


def _check(response: Any, what: str) -> None:
    if response.result != "OK":
        raise ImapFetchError(f"{what}: {response.result} {_text(response.lines)}")


def _text(lines: Sequence[Any]) -> str:
    """The server's last text line, for an error message (bounded, printable)."""
    for line in reversed(lines):
        if isinstance(line, bytes) and line:
            text = line.decode("utf-8", "replace")
            return "".join(ch if ch.isprintable() else "?" for ch in text)[:200]
    return "no text"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def run_imap_worker(config: Config, stop: asyncio.Event) -> None:
    """Run one ``ImapFetcher`` per ``[[inbound.imap_fetch]]`` until ``stop`` is set.

    Builds its own objects (a worker process owns them): the audit sink, the spool
    (actor ``imap``), the TLS context; state files go to ``<data_dir>/imap/``. With no
    mailbox configured it just waits for ``stop``.
    """
    from gateway.audit import AuditSink

    if not config.inbound.imap_fetch:
        _log.info("imap.nothing_to_fetch")
        await stop.wait()
        return
    context = tls_context(config.tls, config.trust)
    audit = AuditSink(config.audit.path)
    audit.start()
    try:
        spool = Spool(
            config.gateway.spool_dir,
            audit=audit,
            actor=ACTOR,
            max_message_size=config.delivery.max_message_size,
        )
        try:
            queue = spool.queue(INBOUND)
            state_dir = config.gateway.data_dir / STATE_SUBDIR
            fetchers = [
                ImapFetcher(fetch, queue=queue, state_dir=state_dir, ca=context)
                for fetch in config.inbound.imap_fetch
            ]
            async with asyncio.TaskGroup() as group:
                for fetcher in fetchers:
                    group.create_task(fetcher.run(stop))
        finally:
            await spool.aclose()
    finally:
        await audit.aclose()
