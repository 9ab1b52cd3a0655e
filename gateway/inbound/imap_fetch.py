"""The IMAP fetcher: pull mail from remote mailboxes into the INBOUND queue (issue 7 item 4).

Role: for each ``[[inbound.imap_fetch]]`` (a mailbox a partner network keeps for us),
``ImapFetcher.run`` connects over IMAPS (RFC 8314 implicit TLS; ``imap://`` only to
loopback, as the config rules allow), logs in (RFC 9051 §6.2.3 LOGIN, the password read
from ``password_file``), SELECTs the mailbox and hands every new message to the INBOUND
queue, where the inbound agent processes it like mail received over SMTP. Then it waits
for more with IDLE (RFC 2177) when the server offers it, else it polls. This module
decides what to fetch, in what order, and what the state file says; talking to the
server (TLS, LOGIN, command timeouts, a lost connection, the FETCH byte budget, LOGOUT)
is its base class ``gateway.inbound.imap_connection.ImapConnection``.

Each session, after SELECT, first writes the state file again as it is, so a state that
cannot be written is found before anything is fetched (or removes it when UIDNEXT
contradicts it, below). Protocol steps for each new message (RFC 9051 §6.4.9 UID,
§6.4.5 FETCH, §6.4.6 STORE):

1. ``UID SEARCH UID <last+1>:*`` lists the new UIDs (a range ``n:*`` also names the
   highest UID when ``n`` is above it, RFC 9051 §6.4.4: those are filtered out);
2. ``UID FETCH <uid> (UID BODY.PEEK[])`` reads it without setting ``\\Seen``;
3. ``Queue.add`` writes it to the INBOUND stage and returns only after the fsyncs
   (``gateway.spool``: "250 means on disk"); envelope MAIL FROM = the ``Return-Path``
   of the message (``""`` if there is none or it is not an address), RCPT TO =
   ``deliver_to_address``; ``Origin.listener = "imap:<user>@<host>"``;
4. then the UID is recorded in the state file;
5. and only then ``UID STORE <uid> +FLAGS.SILENT (\\Seen)``. A STORE refused (a
   read-only mailbox) or lost ends the session with the message queued and recorded
   but left unseen on the server: it is not queued again while the state holds.

State: ``<state_dir>/imap-<hash>.json`` (one per user/host/port/mailbox; 0600, written
atomically with fsync by ``gateway.pki.files.replace_file``) holds the mailbox's
UIDVALIDITY and the last UID handled (``gateway.inbound.imap_state``). The state-file
methods stay in this module: tests replace ``gateway.inbound.imap_fetch.replace_file``
to make the state unwritable, so ``_save_state`` must look that name up here.

Decisions (never lose, at most duplicate; ARCHITECTURE quality bar):

- With a state whose UIDVALIDITY matches the server's, every UID above the last one
  handled is fetched, ``\\Seen`` or not: a crash between steps 3 and 4 re-fetches the
  message (a duplicate), never skips it.
- Without a valid state (first run, UIDVALIDITY changed: the server renumbered the
  mailbox, RFC 9051 §2.3.1.1, so the old UIDs mean nothing; or the SELECT's UIDNEXT is
  at or below the last UID handled: the UIDs went backwards under the same UIDVALIDITY,
  which §2.3.1.1 forbids but a restored mailbox does; checked once, at the session's
  SELECT, and the state file removed) the fetcher starts from the
  beginning of the mailbox but skips messages already ``\\Seen``: the fetcher sets
  ``\\Seen`` only after the spool commit, so a seen message was handed over already.
  This is why the mailbox must be dedicated to the gateway: a person reading it there
  would mark messages seen (a documented requirement of ``[[inbound.imap_fetch]]``).
- A message larger than ``[delivery] max_message_size`` (``MessageTooLarge``) can never
  be queued: it is logged as an error, left unseen on the server for the operator, and
  passed over, so it does not block the mailbox. Memory is bounded whatever the server
  says: a ``UID FETCH`` that receives more than ``max_message_size`` plus
  ``FETCH_SLACK`` bytes loses its connection (``imap_connection``); the message is then
  recorded as passed over the same way before the session ends. Every other
  spool error is temporary: the session ends, nothing is marked, and the fetcher
  reconnects after a back-off.
- A ``UID FETCH`` answer that holds another UID's body, or names ours without a body, is
  an error (``imap_parse.parse_fetched_body``), never read as "expunged" (a loss).
- Errors (network, TLS, timeout, a refused login, a NO/BAD answer) end the session; the
  fetcher reconnects after a back-off (1 s doubling to 5 min). The back-off starts again
  at 1 s only after a session that queued a message or stayed up at least
  ``backoff_max``: a session that fails the same way each time (a full spool disk after
  the login) keeps doubling, and a reset after a session of ``backoff_max`` or more
  never reconnects more often than the capped back-off would. A refused login
  (``imap.login_refused``, never the password: the server's text is cleaned of it) and
  a state file that cannot be written (``imap.state_unwritable``: each session would
  queue the same message again) wait the longest back-off at once. Limit: on a first
  run there is no state to write again, so an unwritable state directory is found only
  when the first message queued is recorded: that message is queued again once per
  longest back-off until the directory is writable (a duplicate every 5 min, no loss).
- Command timeout, a closed connection noticed at once, LOGOUT, the IDLE ``+`` within
  the timeout, LOGIN's astring: ``imap_connection``.
- IDLE is renewed every ``idle_renew`` (25 min, below the 29 min of RFC 2177 §3); any
  server push ends the IDLE and the new UIDs are fetched at once; ``stop`` ends it too.

Library: aioimaplib (``imap_connection``) returns raw response lines, so the small
parsers (UIDVALIDITY, UIDNEXT, SEARCH, the FETCH literal, Return-Path) are
hand-written, sans-IO functions, in ``gateway.inbound.imap_parse``.

Security: certificate and host name checks, and the password's handling, are
``imap_connection``'s (its docstring). Trust level: holds no private key; writes only
to the INBOUND stage and its state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import NamedTuple, Protocol

import aioimaplib

from gateway.config import Config
from gateway.config.model import ImapFetch
from gateway.inbound.imap_connection import (
    FETCH_SLACK,
    ImapConnection,
    _check,
    tls_context,
)
from gateway.inbound.imap_parse import (
    ImapLoginError,
    MailboxUrl,
    origin_listener,
    parse_fetched_body,
    parse_search,
    parse_uidnext,
    parse_uidvalidity,
    quote_astring,
    return_path,
)
from gateway.inbound.imap_state import FetchState, ImapStateError, state_file_name
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

__all__ = [
    "ACTOR",
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_TIMEOUT",
    "FETCH_SLACK",
    "IDLE_RENEW",
    "STATE_SUBDIR",
    "ImapFetcher",
    "InboundSink",
    "MailboxStatus",
    "run_imap_worker",
    "tls_context",
]

DEFAULT_TIMEOUT = 300.0
DEFAULT_POLL_INTERVAL = 60.0
IDLE_RENEW = 25 * 60.0  # RFC 2177 §3: re-issue IDLE at least every 29 minutes
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
STATE_SUBDIR = "imap"
ACTOR = "imap"

_log = get_logger("imap")


class MailboxStatus(NamedTuple):
    """What a SELECT answer says of the mailbox's UIDs (RFC 9051 §7.1)."""

    uidvalidity: int
    uidnext: int | None  # None when the server did not say


class InboundSink(Protocol):
    """What the fetcher needs of the INBOUND queue (``gateway.spool.Queue`` is one)."""

    async def add(self, envelope: Envelope, origin: Origin, content: bytes) -> QueueId: ...


class ImapFetcher(ImapConnection):
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
        max_message_size: int | None = None,
    ) -> None:
        self.fetch = fetch
        self.max_message_size = max_message_size
        self._fetch_budget: int | None = None  # bytes a running FETCH may still receive
        self._cut_short = False  # the running FETCH went past its budget
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
        self._queued = 0  # messages queued by the current session (back-off reset)
        # done when the current connection closes (one session at a time per fetcher)
        self._lost: asyncio.Future[None] | None = None

    # -- the long-running loop ------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch until ``stop`` is set; reconnect with back-off after each error."""
        delay = self.backoff_first
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                await self._session(stop, until_stopped=True)
                continue
            except ImapLoginError as error:
                _log.error("imap.login_refused", user=self.fetch.user, error=str(error))
                delay = self.backoff_max
            except ImapStateError as error:
                _log.error("imap.state_unwritable", user=self.fetch.user, error=str(error))
                delay = self.backoff_max
            except Exception as error:  # noqa: BLE001 - network, TLS, protocol, spool, bug: retried
                _log.warning("imap.session_failed", user=self.fetch.user, error=_describe(error))
                if self._queued or loop.time() - started >= self.backoff_max:
                    delay = self.backoff_first  # it made progress: a new incident
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
        self._queued = 0
        client = await self._connect()
        try:
            await self._login(client)
            mailbox = await self._select(client)
            await asyncio.to_thread(self._prepare_state, mailbox)
            queued = await self._fetch_new(client, mailbox)
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
                    queued += await self._fetch_new(client, mailbox)
            return queued
        finally:
            await self._close(client)

    async def _select(self, client: aioimaplib.IMAP4) -> MailboxStatus:
        response = await self._command(client.select(quote_astring(self.url.mailbox)), "SELECT")
        _check(response, f"SELECT {self.url.mailbox}")
        return MailboxStatus(parse_uidvalidity(response.lines), parse_uidnext(response.lines))

    async def _fetch_new(self, client: aioimaplib.IMAP4, mailbox: MailboxStatus) -> int:
        state = await asyncio.to_thread(self._load_state)
        last_uid = self._trusted_last_uid(state, mailbox)
        since = last_uid or 0  # None: start over, from the unseen messages only
        criteria = [f"UID {since + 1}:*"] + ([] if last_uid is not None else ["UNSEEN"])
        search = client.uid_search(*criteria, charset=None)
        response = await self._command(search, "UID SEARCH")
        _check(response, "UID SEARCH")
        queued = 0
        for uid in (uid for uid in parse_search(response.lines) if uid > since):
            if await self._fetch_one(client, mailbox.uidvalidity, uid):
                queued += 1
        return queued

    def _trusted_last_uid(self, state: FetchState | None, mailbox: MailboxStatus) -> int | None:
        """The last UID handled if ``state`` still describes the mailbox, else None
        (start over from the unseen messages: module docstring, Decisions)."""
        if state is None:
            return None
        if state.uidvalidity != mailbox.uidvalidity:
            _log.warning(
                "imap.uidvalidity_changed",
                user=self.fetch.user,
                old=state.uidvalidity,
                new=mailbox.uidvalidity,
            )
            return None
        return state.last_uid

    async def _fetch_one(self, client: aioimaplib.IMAP4, uidvalidity: int, uid: int) -> bool:
        """Queue message ``uid``, record it, then mark it seen; False if passed over."""
        fetch = client.uid("fetch", str(uid), "(UID BODY.PEEK[])")
        if self.max_message_size is not None:
            self._fetch_budget, self._cut_short = self.max_message_size + FETCH_SLACK, False
        try:
            response = await self._command(fetch, f"UID FETCH {uid}", own_timer=True)
        except ConnectionError:
            if self._cut_short:  # larger than any message we may queue: passed over
                _log.error("imap.message_too_large", user=self.fetch.user, uid=uid)
                await asyncio.to_thread(self._save_state, FetchState(uidvalidity, uid))
            raise
        finally:
            self._fetch_budget = None
        _check(response, f"UID FETCH {uid}")
        message = parse_fetched_body(response.lines, uid)
        queue_id = None if message is None else await self._queue(uid, message)
        await asyncio.to_thread(self._save_state, FetchState(uidvalidity, uid))
        if queue_id is None:
            return False
        store = client.uid("store", str(uid), "+FLAGS.SILENT", r"(\Seen)")
        response = await self._command(store, f"UID STORE {uid}")
        _check(response, f"UID STORE {uid}")
        _log.info("imap.fetched", user=self.fetch.user, uid=uid, queue_id=queue_id)
        return True

    async def _queue(self, uid: int, message: bytes) -> QueueId | None:
        """Hand ``message`` to the INBOUND queue; None if it can never be queued."""
        envelope = Envelope(return_path(message), self.envelope_to)
        try:
            queue_id = await self.queue.add(envelope, self.origin, message)
        except MessageTooLarge as error:
            _log.error("imap.message_too_large", user=self.fetch.user, uid=uid, error=str(error))
            return None
        self._queued += 1
        return queue_id

    async def _idle(self, client: aioimaplib.IMAP4, stop: asyncio.Event) -> None:
        """IDLE until the server pushes something, ``idle_renew`` passes or ``stop``."""
        start = client.idle_start(timeout=self.idle_renew)
        idle = await self._until_stopped(start, stop, "IDLE")
        if idle is None:  # stopped before the server's "+": _close drops the connection
            return
        self.idling.set()
        try:
            push = client.wait_server_push(timeout=self.idle_renew + 60)
            with contextlib.suppress(TimeoutError):  # no push: renew the IDLE
                await self._until_stopped(push, stop, "IDLE", own_timer=True)
        finally:
            self.idling.clear()
        client.idle_done()
        response = await self._command(idle, "IDLE")
        _check(response, "IDLE")

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
        try:
            ensure_private_dir(self.state_path.parent)
            replace_file(self.state_path, state.to_json(), PRIVATE_FILE_MODE)
        except OSError as error:
            raise ImapStateError(
                error.errno, f"{self.state_path}: cannot save the fetch state: {error.strerror}"
            ) from error

    def _prepare_state(self, mailbox: MailboxStatus) -> None:
        """At the start of a session, write the state again as it is: a state that
        cannot be saved stops the session before a message is fetched (``ImapStateError``,
        the longest back-off). A state whose last UID is not below the SELECT's UIDNEXT
        (the UIDs went backwards) is removed instead: the session starts over from the
        unseen messages. Checked here, once: later in the session our own records pass
        the UIDNEXT seen at SELECT."""
        state = self._load_state()
        if state is None:
            return
        if state.uids_went_back(mailbox.uidvalidity, mailbox.uidnext):
            _log.warning(
                "imap.uids_went_back",
                user=self.fetch.user,
                last_uid=state.last_uid,
                uidnext=mailbox.uidnext,
            )
            self._remove_state()
            return
        self._save_state(state)

    def _remove_state(self) -> None:
        try:
            self.state_path.unlink(missing_ok=True)
        except OSError as error:
            raise ImapStateError(
                error.errno, f"{self.state_path}: cannot remove the fetch state: {error.strerror}"
            ) from error


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
            io_threads=config.gateway.spool_io_threads,  # 0: on the loop (spool.runtime)
        )
        try:
            queue = spool.queue(INBOUND)
            state_dir = config.gateway.data_dir / STATE_SUBDIR
            fetchers = [
                ImapFetcher(
                    fetch,
                    queue=queue,
                    state_dir=state_dir,
                    ca=context,
                    max_message_size=config.delivery.max_message_size,
                )
                for fetch in config.inbound.imap_fetch
            ]
            async with asyncio.TaskGroup() as group:
                for fetcher in fetchers:
                    group.create_task(fetcher.run(stop))
        finally:
            await spool.aclose()
    finally:
        await audit.aclose()
