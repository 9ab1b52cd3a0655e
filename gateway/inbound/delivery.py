"""Local delivery: ``local/`` in, the hospital's mail store out (LMTP, SMTP or Maildir).

Role (issue 7 item 3): the stage runner that consumes the spool's ``local`` queue,
written by the inbound agent (one entry per local recipient, already decrypted and
marked). Each entry goes where ``[inbound] deliver_to`` says:

- ``lmtp://host:port`` or ``smtp://host:port``: through a ``StorePool`` of
  ``gateway.inbound.store_client`` (LMTP per RFC 2033, one reply per recipient; SMTP per
  RFC 5321 with STARTTLS required off loopback, RFC 3207). The server certificate is
  verified against ``[trust] anchors`` and the system store (``_trust_context``: a
  hospital server has no S/MIME certificate of ours to pin);
- ``maildir:PATH``: ``gateway.inbound.maildir.deliver_to_maildir`` in a thread, one
  Maildir per local part; a local part that cannot name a directory fails (5.1.3).

Outcomes per recipient: 2xx -> delivered; 4xx, a refused connection, a timeout, a
protocol error (``TemporaryFailure``: ``451 4.4.1``) or a Maildir I/O error
(``451 4.3.0``) -> deferred with the ``RetryPolicy`` of ``[delivery]`` (past
``max_lifetime``: failed, ``expired``); 5xx -> failed with a failure DSN
(``gateway.relay.dsn``: the sender is told; ``protected`` unless the sender is local, as
in the secure agent). One ``delivery.local`` audit event per recipient.

Dispatched MDN (issue 7 item 5; Direct "Delivery Notification" guide §3): when a
recipient is delivered and the message asks for it with
``Disposition-Notification-Options: X-DIRECT-FINAL-DESTINATION-DELIVERY=optional,true``
(``wants_final_delivery_mdn``), a *dispatched* MDN is queued into ``received`` by
``gateway.inbound.stage.queue_mdn`` (clear, signed and encrypted by the secure agent;
hand-off key per recipient, so a repeated pass queues it once; never for an MDN, a DSN
or a null sender; only to Disposition-Notification-To addresses equal to MAIL FROM, the
others dropped and audited: ``queue_mdn``).

Throughput (issue 7 Speed): ``concurrency`` entries (default 32; at most
``LARGE_CONCURRENCY``, 4, of them above 1 MB, each held whole: ``consumer.consume``) are
in flight at once, so their spool fsyncs and audit commits share group commits (32
rather than 16 since session 10: ``gateway.inbound.stage``); those beyond the pool's
``connections`` (default 4) wait for a free session. Entries finish in any order. While
the stage runs, the pool's expired sessions are closed every ``MAX_IDLE`` seconds, and
every pooled session when it stops.

Invariants as in every stage runner: the DSN (and any MDN) is queued before the entry leaves
``active/``; a crash after the store's ``250`` and before ``complete`` delivers twice
at most (at-least-once, docs/spool.md).

Trust level: runs in the delivery worker (``missive worker delivery``), which holds no
private key. It reads decrypted content: the local store is the end of the gateway.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.audit import STAGE_GATHER_WINDOW, AuditEvent, AuditSink
from gateway.config import Config
from gateway.inbound.maildir import PermanentFailure, deliver_to_maildir
from gateway.inbound.stage import queue_mdn
from gateway.inbound.store_client import (
    DEFAULT_CONNECTIONS,
    MAX_IDLE,
    StorePool,
    StoreReply,
    StoreTarget,
    TemporaryFailure,
)
from gateway.log import get_logger
from gateway.relay import notices, routing
from gateway.relay.agent_stage import handoff_key
from gateway.relay.dsn import should_send_dsn
from gateway.relay.dsn_recipients import Action, Reason, RecipientReport
from gateway.relay.mdn import Disposition, wants_final_delivery_mdn
from gateway.spool import (
    LOCAL,
    RECEIVED,
    AuditTrail,
    Claimed,
    Queue,
    Recipient,
    RecipientState,
    RecipientStatus,
    RetryPolicy,
    Spool,
    consumer,
)
from gateway.spool.queue import READ_AHEAD

log = get_logger("inbound.delivery")

DEFAULT_POLL_INTERVAL = 0.2
DEFAULT_CONCURRENCY = 32  # entries in flight: the spool and audit group their fsyncs
LARGE_CONCURRENCY = 4  # of which larger than READ_AHEAD (1 MB), each held whole in memory
STATUS_EXPIRED = "5.4.7"
STATUS_BAD_MAILBOX = "5.1.3"


@dataclass(frozen=True)
class DeliveryOutcome:
    """The end of one pass over one entry (for logs and tests)."""

    queue_id: str
    disposition: str  # "completed" | "bounced" | "deferred" | "held" | "corrupt"
    replies: tuple[tuple[str, int, str], ...] = ()  # (address, code, text)
    dsn: str | None = None


# -- the stage ---------------------------------------------------------------------------


class LocalDelivery:
    """The consumer of ``local`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        audit: AuditTrail,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        tls_context: ssl.SSLContext | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if connections < 1:
            raise ValueError("the pool needs at least one connection")
        self.config = config
        self.spool = spool
        self.audit = audit
        self.policy = policy or RetryPolicy.from_config(config.delivery)
        self.clock = clock
        self.poll_interval = poll_interval
        self.tls_context = tls_context or _trust_context(config)
        self.concurrency = concurrency
        self.pool = _pool_for(config, self.tls_context, connections)
        self.local: Queue = spool.queue(LOCAL)
        self.received: Queue = spool.queue(RECEIVED)

    async def run(self, stop: asyncio.Event) -> None:
        """Recover (standby while another delivery worker holds the lock), then deliver
        entries, ``concurrency`` at once, until ``stop`` is set; the pooled connections
        are closed on the way out."""
        try:
            if (
                await consumer.take_queue(self.local, stop, area="delivery", who="delivery worker")
                is None
            ):
                return
            consumed = asyncio.Event()
            reaper = asyncio.ensure_future(self._close_idle_sessions(consumed))
            try:
                await consumer.consume(
                    self.local,
                    stop,
                    self.process_entry,
                    poll_interval=self.poll_interval,
                    concurrency=self.concurrency,
                    large_concurrency=LARGE_CONCURRENCY,
                )
            finally:
                consumed.set()
                await reaper
        finally:
            await self.aclose()

    async def _close_idle_sessions(self, consumed: asyncio.Event) -> None:
        """Every ``MAX_IDLE`` seconds until ``consumed`` is set, close the pooled sessions
        that expired (a quiet worker keeps no half-closed socket)."""
        while self.pool is not None and not consumed.is_set():
            await consumer.sleep_unless(consumed, MAX_IDLE)
            await self.pool.close_expired()

    async def drain(self) -> list[DeliveryOutcome]:
        """Deliver every entry ready now, ``concurrency`` at once, outcomes in the order
        they finished (tests, tools); ``recover`` must have run. The entries of one
        drain share the pooled connections, which are closed when it ends."""
        try:
            return await consumer.drain(
                self.local,
                self.process_entry,
                concurrency=self.concurrency,
                read_ahead=READ_AHEAD,
            )
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the pooled connections to the store (idempotent)."""
        if self.pool is not None:
            await self.pool.aclose()

    async def process_entry(self, entry: Claimed) -> DeliveryOutcome | None:
        """One pass over a claimed entry; never raises for a bad message."""
        return await consumer.guarded(
            self.local,
            entry,
            self._process,
            area="delivery",
            what="local delivery",
            held=lambda queue_id: DeliveryOutcome(queue_id, "held"),
        )

    async def _process(self, entry: Claimed) -> DeliveryOutcome:
        content = await consumer.content_or_quarantine(self.local, entry)
        if content is None:
            return DeliveryOutcome(entry.queue_id, "corrupt")
        record = entry.record
        pending = list(record.unfinished)
        recipients = [record.envelope.recipients[i] for i in pending]
        replies = await self._deliver(record.envelope.mail_from, recipients, content)
        states = list(record.state.recipients)
        failures: list[RecipientReport] = []
        asks_mdn = any(reply.delivered for reply in replies) and _asks_dispatched_mdn(content)
        for index, recipient, reply in zip(pending, recipients, replies, strict=True):
            states[index], report = self._judge(entry, recipient, states[index], reply)
            if report is not None:
                failures.append(report)
            await self.audit.record(_delivery_event(entry, recipient.address, reply, states[index]))
            if reply.delivered and asks_mdn:
                await self._queue_dispatched_mdn(entry, content, recipient)
        dsn = await self._queue_dsn(entry, content, failures) if failures else None
        shown = tuple(
            (r.address, reply.code, reply.text)
            for r, reply in zip(recipients, replies, strict=True)
        )
        return DeliveryOutcome(entry.queue_id, await self._finish(entry, states), shown, dsn)

    async def _deliver(
        self, mail_from: str, recipients: Sequence[Recipient], content: bytes
    ) -> list[StoreReply]:
        target = self.config.inbound.deliver_to
        addresses = [r.address for r in recipients]
        if target.scheme == "maildir":
            assert target.path is not None
            return [await self._to_maildir(target.path, a, content) for a in addresses]
        assert self.pool is not None
        try:
            return await self.pool.deliver(mail_from, addresses, content)
        except TemporaryFailure as error:
            return [StoreReply(451, f"4.4.1 {error}") for _ in addresses]

    async def _to_maildir(self, root: Path, address: str, content: bytes) -> StoreReply:
        try:
            path = await asyncio.to_thread(deliver_to_maildir, root, address, content)
        except PermanentFailure as error:
            return StoreReply(550, f"{STATUS_BAD_MAILBOX} {error}")
        except OSError as error:
            return StoreReply(451, f"4.3.0 maildir: {error.strerror or error}")
        return StoreReply(250, f"2.0.0 maildir {path.name}")

    def _judge(
        self, entry: Claimed, recipient: Recipient, state: RecipientState, reply: StoreReply
    ) -> tuple[RecipientState, RecipientReport | None]:
        attempts = state.attempts + 1
        text = f"{reply.code} {reply.text}"[:4000]
        if reply.delivered:
            return RecipientState(RecipientStatus.DELIVERED, attempts, None), None
        if not reply.permanent:
            when = self.policy.next_attempt(attempts, entry.record.received, self.clock())
            if when is not None:
                return RecipientState(RecipientStatus.DEFERRED, attempts, text, when), None
            failed = RecipientState(RecipientStatus.FAILED, attempts, f"expired: {text}")
            return failed, self._report(entry, recipient, STATUS_EXPIRED, text, Reason.EXPIRED)
        status = _enhanced(reply) or "5.0.0"
        failed = RecipientState(RecipientStatus.FAILED, attempts, text)
        return failed, self._report(entry, recipient, status, text, Reason.REMOTE_REJECTED)

    def _report(
        self, entry: Claimed, recipient: Recipient, status: str, text: str, reason: Reason
    ) -> RecipientReport | None:
        if not should_send_dsn(Action.FAILED, recipient.notify, entry.record.envelope.mail_from):
            return None
        target = self.config.inbound.deliver_to
        host = target.address.host if target.address is not None else None
        return RecipientReport(
            recipient.address,
            Action.FAILED,
            status,
            original_recipient=recipient.orcpt,
            remote_mta=host,
            diagnostic=text,
            last_attempt=self.clock(),
            reason=reason,
        )

    async def _finish(self, entry: Claimed, states: list[RecipientState]) -> str:
        if any(not state.status.final for state in states):
            due = min(s.next_attempt for s in states if s.next_attempt is not None)
            await self.local.defer(entry, due, states)
            return "deferred"
        if any(state.status is RecipientStatus.DELIVERED for state in states):
            await self.local.complete(entry, states)
            return "completed"
        await self.local.bounce(entry, "the local mail store refused the message", states)
        return "bounced"

    async def _queue_dispatched_mdn(
        self, entry: Claimed, content: bytes, recipient: Recipient
    ) -> str | None:
        """The dispatched MDN of a delivered recipient (the message asks for it:
        ``_asks_dispatched_mdn``)."""
        return await queue_mdn(
            self.config,
            self.local,
            self.received,
            entry,
            content,
            recipient,
            Disposition.DISPATCHED,
            self.clock(),
            audit=self.audit,
            actor="local-delivery",
        )

    async def _queue_dsn(
        self, entry: Claimed, content: bytes, reports: list[RecipientReport]
    ) -> str | None:
        sender = entry.record.envelope.mail_from
        return await notices.queue_dsn(
            source=self.local,
            received=self.received,
            entry=entry,
            original=content,
            reports=reports,
            key=handoff_key("dsn-local", None, (r.final_recipient for r in reports)),
            hostname=self.config.gateway.hostname,
            language=self.config.gateway.language,
            now=self.clock(),
            protected=not routing.is_local(self.config, sender),
            ret=entry.record.envelope.params.ret,
            area="delivery",
        )


_MDN_OPTIONS_FIELD = b"disposition-notification-options"


def _asks_dispatched_mdn(content: bytes) -> bool:
    """``wants_final_delivery_mdn`` on the message's header block. Field names are ASCII
    and matched there without regard to case, so a header block whose lower-cased bytes
    lack the field's name cannot ask: that search is one C loop where the parse is many
    Python steps, and most messages do not ask (measured: less CPU per message)."""
    header = content.partition(b"\r\n\r\n")[0]
    if _MDN_OPTIONS_FIELD not in header.lower():
        return False
    return wants_final_delivery_mdn(header + b"\r\n")


def _enhanced(reply: StoreReply) -> str | None:
    first = reply.text.split(" ", 1)[0]
    parts = first.split(".")
    if len(parts) == 3 and parts[0] == "5" and all(p.isdigit() for p in parts):
        return first
    return None


def _delivery_event(
    entry: Claimed, address: str, reply: StoreReply, state: RecipientState
) -> AuditEvent:
    return AuditEvent(
        type="delivery.local",
        queue_id=entry.queue_id,
        mail_from=entry.record.envelope.mail_from,
        rcpt_to=(address,),
        actor="local-delivery",
        outcome=state.status.value,
        details={"reply": f"{reply.code} {reply.text}"[:500]},
    )


def _pool_for(config: Config, tls_context: ssl.SSLContext, connections: int) -> StorePool | None:
    """The connection pool for an ``lmtp://`` or ``smtp://`` target; None for Maildir."""
    target = config.inbound.deliver_to
    if target.address is None:
        return None
    return StorePool(
        StoreTarget(
            lmtp=target.scheme == "lmtp",
            host=target.address.host,
            port=target.address.port,
            helo=config.gateway.hostname,
            tls_context=tls_context,
        ),
        size=connections,
    )


def _trust_context(config: Config) -> ssl.SSLContext:
    """Verify the hospital's SMTP server against the system store and ``[trust] anchors``."""
    context = ssl.create_default_context()
    for anchor in config.trust.anchors:
        try:
            context.load_verify_locations(cafile=str(anchor))
        except (OSError, ssl.SSLError) as error:
            log.warning("delivery.anchor_unusable", anchor=str(anchor), error=str(error))
    return context


# -- the worker process ----------------------------------------------------------------


async def run_delivery_worker(config: Config, stop: asyncio.Event) -> None:
    """``missive worker delivery``: build the stage from ``config`` and run it until
    ``stop`` (no private key: ``agent_keys=False``)."""
    audit = AuditSink(config.audit.path, gather_window=STAGE_GATHER_WINDOW)
    audit.start()
    try:
        spool = Spool(
            config.gateway.spool_dir,
            audit=audit,
            actor="local-delivery",
            max_message_size=config.delivery.max_message_size,
            io_threads=config.gateway.spool_io_threads,  # 0: on the loop (spool.runtime)
        )
        try:
            await LocalDelivery(config, spool, audit).run(stop)
        finally:
            await spool.aclose()
    finally:
        await audit.aclose()
    log.info("delivery.stopped")
