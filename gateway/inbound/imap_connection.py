"""The IMAP connection under the fetcher: connect, log in, one command at a time, close.

Role: ``ImapConnection`` is the base class of ``gateway.inbound.imap_fetch.ImapFetcher``:
it holds what the fetcher does to talk to the server at all, over aioimaplib, and what
it adds to aioimaplib so that no command waits forever and no answer grows without
bound. What to fetch, in what order, and the state file stay in ``imap_fetch``; the
attributes read here (``fetch``, ``url``, ``ca``, ``timeout``, the FETCH budget, the
connection-lost future) are set by ``ImapFetcher.__init__`` and declared on the class
below. ``tls_context`` builds the IMAPS client context; ``_check`` and ``_text`` turn a
refused answer into an ``ImapFetchError`` / ``ImapLoginError`` text.

Invariants (issue 7 item 4; the fetcher's Decisions in ``imap_fetch`` rely on them):

- Memory is bounded whatever the server says: while a ``UID FETCH`` runs, the bytes
  received past ``max_message_size`` plus ``FETCH_SLACK`` close the connection (a count
  in the protocol's ``data_received``, which aioimaplib would otherwise let grow to what
  the server announced; ``_count_received``); the fetcher then records the message as
  passed over before the session ends.
- Command timeout: ``timeout`` (default 300 s), not aioimaplib's 10 s default, which a
  large FETCH on a slow link passes. For FETCH it is an inactivity timer (aioimaplib
  restarts it on every chunk received), so a big message that keeps arriving is not cut.
- A closed connection is noticed at once: aioimaplib's ``connection_lost`` does not fail
  the pending commands (each would wait for its timeout, up to the IDLE renewal in
  IDLE), so the fetcher sets ``protocol.conn_lost_cb`` itself (``IMAP4_SSL`` does not
  pass it through) and races every command, and the IDLE wait, against it
  (``_command``, ``_until_stopped``). LOGOUT is skipped on a closing connection or
  behind an unanswered command (``_close``).
- The server's ``+`` to IDLE must come within ``timeout`` (aioimaplib waits for it
  without limit), and ``stop`` ends the wait for it too (``_until_stopped``).
- LOGIN sends the user as an astring (quoted unless an atom, RFC 9051 §6.2.3, §4.3);
  aioimaplib quotes only the password.

Library: aioimaplib (GPL-3.0-only, a licensing point for whoever ships Missive) does the
protocol; ``gateway.inbound.imap_protocol`` reads its responses in a loop (it recurses
once per line). It holds each FETCH literal whole in memory, so memory per fetcher is
bounded by the largest message in the mailbox, not by our spool limit.

Security: the server certificate is verified against the configured trust anchors and
the host name of the URL (``tls_context``: the relay's ``client_context`` with
CERT_REQUIRED, plus OpenSSL's host name check; like the relay, it presents the ``[tls]``
certificate as client certificate when one is configured); ``imap://`` (no TLS) is only
allowed to loopback by the config rules. The password is read from ``password_file`` at
each login, never logged (aioimaplib scrubs it from its debug log; a refusal text that
echoes it is cleaned before it reaches ``ImapLoginError``, ``_text``). Trust level:
holds no private key; talks only to the configured server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import aioimaplib

from gateway.config.model import ImapFetch, TlsSection, TrustSection
from gateway.inbound.imap_parse import ImapFetchError, ImapLoginError, MailboxUrl, quote_astring
from gateway.inbound.imap_protocol import read_responses_in_a_loop
from gateway.log import get_logger

LOGOUT_TIMEOUT = 5.0
FETCH_SLACK = 64 * 1024  # a FETCH answer's own lines around the message's literal

_log = get_logger("imap")
_T = TypeVar("_T")


def tls_context(tls: TlsSection, trust: TrustSection) -> ssl.SSLContext:
    """IMAPS client context: chain checked against ``[trust]`` anchors (+ intermediates)
    and the host name checked (RFC 6125 via OpenSSL), TLS >= ``[tls] min_version``."""
    from gateway.relay.tlsclient import client_context  # the one place contexts are built

    context = client_context(tls, trust, verify=True)
    context.check_hostname = True
    return context


class ImapConnection:
    """The connection half of an ``ImapFetcher`` (module docstring): its ``__init__``
    sets the attributes declared here."""

    fetch: ImapFetch
    url: MailboxUrl
    ca: ssl.SSLContext
    timeout: float
    _fetch_budget: int | None  # bytes a running FETCH may still receive
    _cut_short: bool  # the running FETCH went past its budget
    _lost: asyncio.Future[None] | None  # done when the current connection closes

    # -- connecting and logging in ---------------------------------------------------------

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

    # -- one command at a time -------------------------------------------------------------

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

    # -- closing ---------------------------------------------------------------------------

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
