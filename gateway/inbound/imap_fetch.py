"""The IMAP fetcher: pull mail from remote mailboxes into the INBOUND queue (issue 7 item 4).

Role: for each ``[[inbound.imap_fetch]]`` (a mailbox a partner network keeps for us),
``ImapFetcher.run`` connects over IMAPS (RFC 8314 implicit TLS; ``imap://`` only to
loopback, as the config rules allow), logs in (RFC 9051 §6.2.3 LOGIN, the password read
from ``password_file``), SELECTs the mailbox and hands every new message to the INBOUND
queue, where the inbound agent processes it like mail received over SMTP. Then it waits
for more with IDLE (RFC 2177) when the server offers it, else it polls.

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
UIDVALIDITY and the last UID handled (``gateway.inbound.imap_state``).

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
  says: while a ``UID FETCH`` runs, the bytes received past ``max_message_size`` plus
  ``FETCH_SLACK`` close the connection (a count in the protocol's ``data_received``,
  which aioimaplib would otherwise let grow to what the server announced); the message
  is then recorded as passed over the same way before the session ends. Every other
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
- Command timeout: ``timeout`` (default 300 s), not aioimaplib's 10 s default, which a
  large FETCH on a slow link passes. For FETCH it is an inactivity timer (aioimaplib
  restarts it on every chunk received), so a big message that keeps arriving is not cut.
- A closed connection is noticed at once: aioimaplib's ``connection_lost`` does not fail
  the pending commands (each would wait for its timeout, up to the IDLE renewal in
  IDLE), so the fetcher sets ``protocol.conn_lost_cb`` itself (``IMAP4_SSL`` does not
  pass it through) and races every command, and the IDLE wait, against it. LOGOUT is
  skipped on a closing connection or behind an unanswered command.
- IDLE is renewed every ``idle_renew`` (25 min, below the 29 min of RFC 2177 §3); any
  server push ends the IDLE and the new UIDs are fetched at once. The server's ``+``
  must come within ``timeout`` (aioimaplib waits for it without limit), and ``stop``
  ends the wait for it too.
- LOGIN sends the user as an astring (quoted unless an atom, RFC 9051 §6.2.3, §4.3);
  aioimaplib quotes only the password.

Library: aioimaplib (GPL-3.0-only, a licensing point for whoever ships Missive) does the
protocol; it returns raw response lines, so the small parsers (UIDVALIDITY, UIDNEXT,
SEARCH, the FETCH literal, Return-Path) are hand-written, sans-IO functions, in
``gateway.inbound.imap_parse``. It holds each FETCH
literal whole in memory, so memory per fetcher is bounded by the largest message in the
mailbox, not by our spool limit.

Security: the server certificate is verified against the configured trust anchors and
the host name of the URL (``tls_context``: the relay's ``client_context`` with
CERT_REQUIRED, plus OpenSSL's host name check; like the relay, it presents the ``[tls]``
certificate as client certificate when one is configured); the password is read at
each login, never logged (aioimaplib scrubs it from its debug log; a refusal text that
echoes it is cleaned before it reaches ``ImapLoginError``). Trust level: holds
no private key; writes only to the INBOUND stage and its state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

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
    parse_uidnext,
    parse_uidvalidity,
    quote_astring,
    return_path,
)
from gateway.inbound.imap_protocol import read_responses_in_a_loop
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

DEFAULT_TIMEOUT = 300.0
DEFAULT_POLL_INTERVAL = 60.0
IDLE_RENEW = 25 * 60.0  # RFC 2177 §3: re-issue IDLE at least every 29 minutes
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
LOGOUT_TIMEOUT = 5.0
STATE_SUBDIR = "imap"
ACTOR = "imap"

_log = get_logger("imap")
_T = TypeVar("_T")


FETCH_SLACK = 64 * 1024  # a FETCH answer's own lines around the message's literal


class MailboxStatus(NamedTuple):
    """What a SELECT answer says of the mailbox's UIDs (RFC 9051 §7.1)."""

    uidvalidity: int
    uidnext: int | None  # None when the server did not say


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

    async def _connect(self) -> aioimaplib.IMAP4:
        url = self.url
        if url.tls:
            client = aioimaplib.IMAP4_SSL(
                url.host, url.port, timeout=self.timeout, ssl_context=self.ca
            )
        else:
            client = aioimaplib.IMAP4(url.host, url.port, timeout=self.timeout)
        self._lost = asyncio.get_running_loop().create_future()
        client.protocol.conn_lost_cb = self._connection_lost  # IMAP4_SSL drops the argument
        self._count_received(client.protocol)
        read_responses_in_a_loop(client.protocol)  # aioimaplib recurses once per line
        try:
            await self._command(client.wait_hello_from_server(), "greeting")
        except BaseException:
            await self._close(client)
            raise
        return client

    def _count_received(self, protocol: Any) -> None:
        """Bound what a FETCH may receive (module docstring): the transport calls the
        protocol's ``data_received`` through the attribute, so a wrapper on this one
        protocol object counts every byte before aioimaplib buffers it."""
        received = protocol.data_received

        def counted(data: bytes) -> None:
            if self._fetch_budget is not None:
                self._fetch_budget -= len(data)
                if self._fetch_budget < 0:
                    self._fetch_budget, self._cut_short = None, True
                    protocol.transport.close()  # the FETCH fails: connection lost
                    return
            received(data)

        protocol.data_received = counted

    def _connection_lost(self, error: Exception | None) -> None:
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _login(self, client: aioimaplib.IMAP4) -> None:
        password = await asyncio.to_thread(self._read_password)
        user = quote_astring(self.fetch.user)  # aioimaplib quotes only the password
        response = await self._command(client.login(user, password), "LOGIN")
        if response.result != "OK":
            raise ImapLoginError(
                f"{self.fetch.user} at {self.url.host}:{self.url.port}: login refused "
                f"({_text(response.lines, hide=password)})"
            )
        await self._command(client.protocol.capability(), "CAPABILITY")  # post-login
        _log.info("imap.logged_in", user=self.fetch.user, host=self.url.host)

    def _read_password(self) -> str:
        try:
            text = self.fetch.password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as error:
            raise ImapFetchError(f"{self.fetch.password_file}: cannot read: {error}") from None
        return text.rstrip("\r\n")

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

    async def _until_stopped(
        self, awaitable: Awaitable[_T], stop: asyncio.Event, what: str, *, own_timer: bool = False
    ) -> _T | None:
        """``_command`` that also ends, with None, when ``stop`` is set."""
        stopping = asyncio.ensure_future(stop.wait())
        command = asyncio.ensure_future(self._command(awaitable, what, own_timer=own_timer))
        try:
            await asyncio.wait({command, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (command, stopping):
                task.cancel()
            await asyncio.gather(command, stopping, return_exceptions=True)
        return command.result() if command.done() and not command.cancelled() else None

    async def _command(self, awaitable: Awaitable[_T], what: str, *, own_timer: bool = False) -> _T:
        """Await one IMAP command within the command timeout (aioimaplib leaves some
        commands, STORE and CAPABILITY among them, without one; ``own_timer`` for those
        that have a better one: FETCH's inactivity timer, the IDLE push wait), and fail
        at once when the connection closes (aioimaplib would wait for the timeout)."""
        assert self._lost is not None, "_connect() comes first"
        command = asyncio.ensure_future(awaitable)
        racing: set[asyncio.Future[Any]] = {command, self._lost}
        try:
            await asyncio.wait(
                racing,
                timeout=None if own_timer else self.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not command.done():
                command.cancel()
                await asyncio.gather(command, return_exceptions=True)
        if not command.cancelled():
            return command.result()
        if self._lost.done():
            raise ConnectionResetError(f"{what}: the server closed the connection")
        raise TimeoutError(f"{what}: no answer within {self.timeout:.0f}s")

    async def _close(self, client: aioimaplib.IMAP4) -> None:
        """LOGOUT politely if logged in, the connection open and no command unanswered
        (LOGOUT would wait behind it), then drop the connection whatever its state."""
        protocol = client.protocol
        transport = protocol.transport
        waiting = protocol.pending_async_commands.values()
        answered = protocol.pending_sync_command is None and not any(waiting)
        lost = self._lost is None or self._lost.done()
        alive = transport is not None and not transport.is_closing() and not lost
        if protocol.state in (aioimaplib.AUTH, aioimaplib.SELECTED) and answered and alive:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(protocol.logout(), LOGOUT_TIMEOUT)
        if transport is not None:
            transport.close()
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


def _check(response: Any, what: str) -> None:
    if response.result != "OK":
        raise ImapFetchError(f"{what}: {response.result} {_text(response.lines)}")


def _text(lines: Sequence[Any], *, hide: str = "") -> str:
    """The server's last text line, for an error message (bounded, printable), without
    ``hide`` (the password, as sent or as a quoted string, should the server echo it)."""
    for line in reversed(lines):
        if isinstance(line, bytes) and line:
            text = line.decode("utf-8", "replace")
            if hide:  # as aioimaplib sent it (a quoted string), then as it is
                for form in (aioimaplib.quoted(hide)[1:-1], hide):
                    text = text.replace(form, "***")
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
