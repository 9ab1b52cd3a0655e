"""The relay's SMTP client: one message to the next hop, an outcome per recipient.

Role: ``RelayClient.deliver(route, envelope, content)`` finds the hosts (``mx``), opens or
reuses an SMTP session (``smtp_session.SmtpSession``, secured by ``tlsclient``), has it
carry MAIL, RCPT, DATA and returns a ``smtp_reply.DeliveryResult`` with one ``Outcome``
per recipient. It schedules nothing: retries, DSN and the queue state are the caller's
(STYLE 6). Trust level: holds the gateway's TLS key and, for a smarthost route, its SMTP
AUTH password (read from ``auth_password_file`` at each new session, never logged);
talks only to next hops.

Decision (library): our own small client on asyncio streams rather than aiosmtplib
(MIT, maintained). aiosmtplib's ``data()``/``sendmail()`` take the whole message as one
``bytes``; the relay streams it from the spool (``Queue.content``, messages up to
``delivery.max_message_size`` and ``concurrency_per_destination`` at a time), needs the
raw ``SSLObject`` for its own chain validation and the reply of every RCPT kept apart.
What aiosmtplib would have given (reply parsing, dot-stuffing, EHLO keywords) is the
sans-IO modules ``smtp_reply``, ``smtp_commands`` and ``smtp_data``, a few dozen lines
each, tested without sockets. The protocol of one session (EHLO, STARTTLS, AUTH,
PIPELINING, timeouts) is described in ``smtp_session``.

Decisions made here (RFC 5321 unless noted):
- fall-through (§5.1): a host that cannot be reached, a TLS or verification failure, a
  421, a broken connection or a timeout moves on to the next address and the next MX
  (with fresh content); when every host failed, each recipient gets a temporary failure
  that lists why. A verification failure is never retried in clear (fail closed);
- a refused AUTH (535 5.7.8 "credentials invalid", or 454, RFC 4954 §6) ends the
  session like any session failure: next host, then every recipient *deferred*, never
  bounced nor sent to the fallback — the credentials are the gateway's own
  configuration, not a fault of the message, and the operator fixes the password while
  the queue waits (Postfix's ``smtp_sasl_auth_soft_bounce = yes`` default makes the
  same choice); past ``max_lifetime`` the message fails with a DSN as any deferred one.
  The login (never the password) is in ``DeliveryResult.auth_user`` and the
  ``relay.transaction`` log line;
- a message the peer cannot take at all (size, 8BITMIME, SMTPUTF8: ``MessageRefused``)
  fails permanently on that host, the session stays clean and is kept;
- a ``tls-only`` route sends nothing before the peer's verified certificate passed the
  liste blanche of the recipient domains;
- reuse: after a transaction the session goes back to an idle pool (per route, host,
  port and address; at most ``MAX_MESSAGES_PER_SESSION`` messages, ``IDLE_LIMIT`` idle)
  and the next message to that host sends RSET (§4.1.1.5) on it instead of connecting
  (with PIPELINING, as the first command of its group). A pooled session whose RSET
  fails (the peer closed it while idle, a 421, a refusal) is stale: it is closed and
  the message takes the next pooled session or a new connection to the same address,
  not the next host. Nothing of the message was sent on it (no 354 was read), so
  this cannot duplicate a message;
- ``concurrency_per_destination``: one semaphore per destination (the static next hop,
  else the recipient domain) bounds the sessions in use toward it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence

from gateway.config.model import Route, TlsSection, TrustSection
from gateway.log import get_logger
from gateway.relay.mx import MailHost, MxResolver, RoutingError
from gateway.relay.smtp_data import ContentSource
from gateway.relay.smtp_reply import DeliveryResult, MessageRefused, Outcome
from gateway.relay.smtp_session import (
    SESSION_ERRORS,
    SessionFailure,
    SessionSecurity,
    SmtpSession,
    StaleSession,
    Timeouts,
    describe_error,
)
from gateway.relay.tlsclient import PeerVerifier, TlsVerificationError, client_context
from gateway.spool.model import Envelope

log = get_logger("relay.client")

MAX_MESSAGES_PER_SESSION = 100
IDLE_LIMIT = 30.0  # seconds an idle session may wait for reuse

_PoolKey = tuple[str, str, int, str]


class RelayClient:
    """Delivers messages for routes; owns the idle-session pool and the semaphores."""

    def __init__(
        self,
        *,
        helo_name: str,
        tls: TlsSection,
        trust: TrustSection,
        resolver: MxResolver,
        verifier: PeerVerifier,
        concurrency_per_destination: int,
        timeouts: Timeouts | None = None,
    ) -> None:
        self._helo_name = helo_name
        self._tls = tls
        self._trust = trust
        self._resolver = resolver
        self._verifier = verifier
        self._concurrency = concurrency_per_destination
        self._timeouts = timeouts or Timeouts()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._idle: dict[_PoolKey, list[SmtpSession]] = {}
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}

    async def deliver(
        self,
        route: Route,
        envelope: Envelope,
        content: ContentSource,
        *,
        size: int | None = None,
    ) -> DeliveryResult:
        """Send one message to ``route``'s next hop or MX; never raises for a peer's fault.

        Without a static ``next_hop`` every recipient must be of one domain (the caller
        groups them). ``content()`` is called once per attempt (fresh iterator)."""
        domains = sorted({r.address.rpartition("@")[2].lower() for r in envelope.recipients})
        if route.next_hop is None and len(domains) != 1:
            raise ValueError("an MX route delivers one recipient domain at a time")
        destination = str(route.next_hop) if route.next_hop is not None else domains[0]
        size = size if size is not None else envelope.params.size
        semaphore = self._semaphores.setdefault(
            f"{route.name}/{destination}", asyncio.Semaphore(self._concurrency)
        )
        async with semaphore:
            return await self._deliver(route, envelope, content, size, domains)

    async def _deliver(
        self,
        route: Route,
        envelope: Envelope,
        content: ContentSource,
        size: int | None,
        domains: list[str],
    ) -> DeliveryResult:
        addresses = envelope.addresses
        try:
            hosts = await self._resolver.hosts_for(route, domains[0])
        except RoutingError as error:
            outcome = (
                Outcome.failed(error.text, error.enhanced)
                if error.permanent
                else Outcome.temporary(error.text, error.enhanced)
            )
            return DeliveryResult({a: outcome for a in addresses})
        attempts: list[str] = []
        for host in hosts:
            for address in host.addresses:
                result = await self._try_host(
                    route, host, address, envelope, content, size, domains, attempts
                )
                if result is not None:
                    return result
        text = "no next hop could take the message: " + "; ".join(attempts)
        enhanced = "4.7.5" if any("certificate" in a or "TLS" in a for a in attempts) else "4.4.1"
        return DeliveryResult(
            {a: Outcome.temporary(text[:900], enhanced) for a in addresses},
            attempts=tuple(attempts),
        )

    async def _try_host(
        self,
        route: Route,
        host: MailHost,
        address: str,
        envelope: Envelope,
        content: ContentSource,
        size: int | None,
        domains: list[str],
        attempts: list[str],
    ) -> DeliveryResult | None:
        """Deliver through one address; None (and a note in ``attempts``) to fall through."""
        session: SmtpSession | None = None
        try:
            while True:  # each stale pooled session is closed: this ends with a new one
                session = await self._session(route, host, address)
                if route.security == "tls-only":
                    self._check_liste_blanche(session, domains)
                try:
                    outcomes, dsn = await session.transaction(envelope, content, size)
                    break
                except StaleSession as stale:
                    log.debug("relay.session_stale", route=route.name, reason=str(stale))
                    stale_session, session = session, None
                    stale_session.broken = True
                    await stale_session.close()
        except MessageRefused as refused:
            assert session is not None  # raised before MAIL: the session is clean
            await self._release(route, session)
            outcomes = {a: refused.outcome for a in envelope.addresses}
            return _result(outcomes, host, session, dsn=False, attempts=attempts)
        except SESSION_ERRORS as error:
            note = f"{host.name}[{address}]:{host.port}: {describe_error(error)}"
            attempts.append(note)
            log.warning("relay.host_failed", route=route.name, host=host.name, error=note)
            if session is not None:
                session.broken = True
                await session.close()
            return None
        except BaseException:  # e.g. the spool's CorruptEntry while streaming DATA
            if session is not None:
                session.broken = True
                await session.close()
            raise
        await self._release(route, session)
        log.info(
            "relay.transaction",
            route=route.name,
            host=host.name,
            address=address,
            tls=session.peer.tls_version or "none",
            peer_dn=session.peer.dn or "",
            auth=session.auth_user or "none",
            delivered=sum(o.delivered for o in outcomes.values()),
            recipients=len(outcomes),
        )
        return _result(outcomes, host, session, dsn=dsn, attempts=attempts)

    def _check_liste_blanche(self, session: SmtpSession, domains: Sequence[str]) -> None:
        certificate = session.peer.certificate
        if certificate is None or not session.peer.verified:
            raise SessionFailure("tls-only route without a verified peer certificate")
        try:
            self._verifier.check_liste_blanche(certificate, domains)
        except TlsVerificationError as error:
            raise SessionFailure(str(error)) from None

    async def _session(self, route: Route, host: MailHost, address: str) -> SmtpSession:
        """An idle session to reuse (after RSET, or with RSET pending), else a new one."""
        key = (route.name, host.name, host.port, address)
        while idle := self._idle.get(key):
            session = idle.pop()
            if time.monotonic() - session.idle_since > IDLE_LIMIT:
                await session.close()
                continue
            try:
                await session.reuse()
                return session
            except SESSION_ERRORS:
                session.broken = True
                await session.close()
        session = SmtpSession(host, address, self._helo_name, self._timeouts, route)
        try:
            await session.open(await self._security(route, host))
        except BaseException:
            session.broken = True
            await session.close()
            raise
        log.debug("relay.session_opened", route=route.name, host=host.name, address=address)
        return session

    async def _security(self, route: Route, host: MailHost) -> SessionSecurity:
        credentials = None
        if route.auth_user is not None and route.auth_password_file is not None:
            password = await asyncio.to_thread(route.auth_password_file.read_text, "utf-8")
            credentials = (route.auth_user, password.rstrip("\r\n"))
        if route.tls == "none":
            return SessionSecurity("none", None, host.name, None, credentials)
        verify = route.tls == "verify"
        key = (route.name, verify)
        if key not in self._contexts:
            self._contexts[key] = client_context(
                self._tls, self._trust, verify=verify, route_anchors=route.anchors
            )
        reference = route.tls_name or host.name
        return SessionSecurity(
            route.tls, self._contexts[key], reference, self._verifier, credentials
        )

    async def _release(self, route: Route, session: SmtpSession) -> None:
        """Keep a healthy session for the next message to the same host."""
        if session.broken or session.messages_sent >= MAX_MESSAGES_PER_SESSION:
            await session.close()
            return
        session.idle_since = time.monotonic()
        key = (route.name, session.host.name, session.host.port, session.address)
        self._idle.setdefault(key, []).append(session)

    async def close(self) -> None:
        """Close every idle session (QUIT)."""
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        await asyncio.gather(*(s.close() for s in sessions))


def _result(
    outcomes: dict[str, Outcome],
    host: MailHost,
    session: SmtpSession,
    *,
    dsn: bool,
    attempts: list[str],
) -> DeliveryResult:
    peer = session.peer
    return DeliveryResult(
        outcomes,
        mx_host=host.name,
        tls_version=peer.tls_version,
        peer_dn=peer.dn,
        peer_cert_serial=peer.serial,
        peer_verified=peer.verified,
        auth_user=session.auth_user,
        dsn_passed=dsn,
        attempts=tuple(attempts),
    )
