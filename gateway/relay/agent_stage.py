"""The secure agent stage: ``received/`` in, ``relay/<route>/``, ``inbound/``, post and DSN out.

Role (ARCHITECTURE outbound step 3, issue 6 items 1, 3, 5): the consumer of the spool's
``received`` queue. At start it recovers the queue (``Queue.recover``: takes the stage's
consumer lock, moves ``active/`` back to ``incoming/``), then loops: claim an entry, read
its content, run ``SecureAgent.process`` over the recipients that have no final status
yet, and write what it decided:

- each ``OutgoingMessage`` of an SMTP route -> a hand-off to ``relay/<route>``; of the
  implicit local route -> a hand-off to ``inbound`` with the content unchanged;
- a recipient of a ``transport = "postal"`` route, or whose fallback ``route:<name>``
  chain ends in ``postal`` -> a letter to the outbox and a ``relayed`` DSN (``bounce``:
  failed). That part moved to ``gateway.relay.agent_postal`` (``PostalDelivery``, a
  mixin of ``AgentStage``, with the per-recipient decisions ``_fail`` / ``_defer``) with
  its docstring (session 7 split, a pure move);
- ``failed`` recipients, a fallback ``bounce``, a permanent postal error (no postal
  address, unreadable message) -> one failure DSN per pass (when ``should_send_dsn``);
- ``deferred`` recipients (directory down, no signing key, a temporary postal error) ->
  ``Queue.defer`` with the ``RetryPolicy`` of ``[delivery]``; past ``max_lifetime``
  they fail with reason ``expired``;
- then the entry is completed (or bounced when nothing was delivered) once every
  recipient has a final status; every ``AgentResult.audit`` event is recorded first.

Invariants (ARCHITECTURE quality bar, "no accepted message is ever lost"):

- every write happens before the entry leaves ``active/``: hand-offs, letters and DSNs
  first, then ``defer``/``complete``. A crash at any point leaves the entry to be
  recovered and processed again;
- hand-offs are keyed deterministically (``handoff_key``: the kind, the route and a
  digest of the recipient addresses), so a repeated pass finds its children already
  written and writes nothing (the child keeps the first encryption); letters are named
  by queue id and address (``postal.letter_stem``) and replace themselves;
- a later pass only processes recipients without a final status: a recipient handed
  off or failed is never sent twice by this stage;
- each mailbox is processed once per pass and all its occurrences share one state, even
  in a record of an older gateway that lists it twice (``Pass.of``, ``agent_pass``);
- a DSN is a message of the gateway's own (``Origin("internal")``, MAIL FROM:<>, RCPT TO
  the sender, ``dsn_envelope``), handed off into ``received`` so it takes the same
  path as any mail; never to a null sender (RFC 3461 §6.1).

DSN content (issue 6 item 3): headers only of the original (RET=HDRS unless FULL was
asked); ``protected=True`` (allow-listed headers, ``Subject: [...]``, RET=FULL
downgraded) unless the sender is in ``gateway.local_domains``, because a DSN to a
remote sender may leave the gateway in clear (``tls-only`` routes) and the real
Subject often names a patient.

Errors: a content that fails its SHA-256 check -> ``Queue.quarantine`` (``corrupt/``);
any other exception while processing one entry -> the entry is held (``hold/``, the
reason in the record's note and the log, never a body) so one bad message never stops
the worker nor loops on it; an operator releases it. The spool's and the audit's own
errors (disk full, audit down) are logged and the entry stays in ``active/``, recovered
at the next start.

Throughput (issue 6 Speed): each pass waits on several fsyncs (the spool's group commit,
the audit trail's ``synchronous = FULL``), so ``concurrency`` entries are in flight at
once and share those commits; the audit events of one pass are queued together and
awaited together (all committed before any hand-off, as before), and an empty queue is
looked at again after ``poll_interval`` (a listdir). Per entry the content is read in
one I/O job (``Queue.read_all``), its header block is parsed once
(``protect.SplitMessage``: routing, the Bcc split and the tamper rule share it), and
the one info log line is the spool's ``spool.added`` of each hand-off (its ``parent``
and ``stage`` say what ``agent.handed_off``, now a debug line, says; the audit trail has
the rest).

Modules: the bookkeeping of one pass (``Pass``, ``EntryOutcome``, the RFC 3463 codes,
``handoff_key``) is in ``gateway.relay.agent_pass`` (sans-IO), the worker's
``SecureAgent`` (its private keys) is built by ``gateway.relay.agent_build``; their
public names are re-exported here; the postal methods and the per-recipient decisions
are in ``gateway.relay.agent_postal``.

Trust level: runs in the secure agent worker process (``missive worker agent``), the
only process that loads private keys; it never listens on a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from annuaire.backend import open_directory
from annuaire.lookup import CertificateLookup
from gateway.audit import STAGE_GATHER_WINDOW, AuditEvent, AuditSink
from gateway.config import Config
from gateway.log import get_logger
from gateway.relay import notices, routing
from gateway.relay.agent import AgentResult, SecureAgent
from gateway.relay.agent_build import build_secure_agent
from gateway.relay.agent_pass import (
    STATUS_EXPIRED,
    STATUS_NO_CERTIFICATE,
    STATUS_NO_ROUTE,
    STATUS_POSTAL_FAILED,
    STATUS_POSTED,
    STATUS_REFUSED,
    EntryOutcome,
    Pass,
    failure_code,
    handoff_key,
    postal_event,  # noqa: F401  (used by agent_postal; importable here as before)
)
from gateway.relay.agent_postal import PostalDelivery
from gateway.relay.dsn import should_send_dsn
from gateway.relay.dsn_recipients import Action, RecipientReport
from gateway.smime.validate import CertificateValidator
from gateway.spool import (
    INBOUND,
    RECEIVED,
    AuditTrail,
    Claimed,
    Envelope,
    Queue,
    RecipientStatus,
    RetryPolicy,
    Spool,
    consumer,
    relay_stage,
)
from gateway.spool.queue import READ_AHEAD

log = get_logger("relay.agent_stage")

DEFAULT_CONCURRENCY = 16  # entries in flight: the spool and audit group their fsyncs
DEFAULT_POLL_INTERVAL = 0.05  # seconds between claims of an empty queue (a listdir)

__all__ = [  # with the public names moved to agent_pass and agent_build, importable here
    "DEFAULT_CONCURRENCY",
    "DEFAULT_POLL_INTERVAL",
    "STATUS_EXPIRED",
    "STATUS_NO_CERTIFICATE",
    "STATUS_NO_ROUTE",
    "STATUS_POSTAL_FAILED",
    "STATUS_POSTED",
    "STATUS_REFUSED",
    "AgentStage",
    "EntryOutcome",
    "build_secure_agent",
    "handoff_key",
    "run_agent_worker",
]


class AgentStage(PostalDelivery):
    """The consumer of ``received`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        agent: SecureAgent,
        lookup: CertificateLookup,
        audit: AuditTrail,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        concurrency: int = DEFAULT_CONCURRENCY,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.config = config
        self.spool = spool
        self.agent = agent
        self.lookup = lookup
        self.audit = audit
        self.policy = policy or RetryPolicy.from_config(config.delivery)
        self.clock = clock
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.received: Queue = spool.queue(RECEIVED)
        self._targets: dict[str, Queue] = {}  # hand-off queues by stage name

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Recover (or wait as a standby while another agent holds the lock), then
        claim and process entries until ``stop`` is set; in-flight entries finish."""
        report = await consumer.take_queue(self.received, stop, area="agent", who="secure agent")
        if report is None:
            return
        log.info("agent.started", recovered=len(report.requeued))
        await consumer.consume(
            self.received,
            stop,
            self.process_entry,
            poll_interval=self.poll_interval,
            concurrency=self.concurrency,
        )

    async def process_next(self) -> EntryOutcome | None:
        """Claim and process one ready entry; None when there is none (or the spool
        failed). The caller must have called ``recover`` (it takes the consumer lock)."""
        entry = await self.received.claim(read_ahead=READ_AHEAD)
        return None if entry is None else await self.process_entry(entry)

    async def drain(self) -> list[EntryOutcome]:
        """Process every entry that is ready now, one after the other (tests, tools).
        The caller must have called ``recover`` (it takes the consumer lock)."""
        return await consumer.drain(self.received, self.process_entry, read_ahead=READ_AHEAD)

    # -- one entry ---------------------------------------------------------------------

    async def process_entry(self, entry: Claimed) -> EntryOutcome | None:
        """One pass over a claimed entry; never raises for a bad message.

        Returns None when the spool or the audit trail failed: the entry then stays in
        ``active/`` and is recovered at the next start."""
        return await consumer.guarded(
            self.received,
            entry,
            self._process,
            area="agent",
            what="secure agent",
            held=lambda queue_id: EntryOutcome(queue_id, "held"),
        )

    async def _process(self, entry: Claimed) -> EntryOutcome:
        content = await consumer.content_or_quarantine(self.received, entry)
        if content is None:
            return EntryOutcome(entry.queue_id, "corrupt")
        record = entry.record
        work = Pass.of(record)  # each mailbox once, even in an old record (agent_pass)
        envelope = work.work_envelope(record.envelope)  # a later pass: the unfinished only
        if envelope is None:  # every recipient already final (an operator's release)
            await self.received.complete(entry, work.states)
            return EntryOutcome(entry.queue_id, "completed")
        result = await self.agent.process(envelope, content, record.origin, queue_id=entry.queue_id)
        await self._record_all(result.audit)
        handoffs = await self._hand_off_messages(entry, result, work)
        await self._post_all(entry, content, self._postal_recipients(result, work), work)
        for outcome in result.failed:
            self._fail(work, outcome.address, outcome.reason, *failure_code(outcome))
        self._defer_all(entry, result.deferred, work)
        dsns = await self._queue_dsns(entry, content, work)
        return await self._finish(entry, work, handoffs, dsns)

    async def _record_all(self, events: Sequence[AuditEvent]) -> None:
        """Commit every event before going on; queued in order, committed together (one
        audit group commit instead of one per event), any failure raised. A single event
        (the usual case) is awaited directly: no task to wrap it."""
        if len(events) == 1:
            await self.audit.record(events[0])
        elif events:
            await asyncio.gather(*(self.audit.record(event) for event in events))

    def _target(self, stage: str) -> Queue:
        """The queue of ``stage``, kept: ``Spool.queue`` rebuilds the stage's paths."""
        queue = self._targets.get(stage)
        if queue is None:
            queue = self._targets.setdefault(stage, self.spool.queue(stage))
        return queue

    async def _hand_off_messages(
        self, entry: Claimed, result: AgentResult, work: Pass
    ) -> list[str]:
        children: list[str] = []
        for outgoing in result.messages:
            addresses = [r.address for r in outgoing.recipients]
            if outgoing.protection == "postal":  # a transport = "postal" route: _post_all
                continue
            if outgoing.protection == "local":
                target, key = self._target(INBOUND), handoff_key("local", None, addresses)
            else:
                target = self._target(relay_stage(outgoing.route))
                key = handoff_key("relay", outgoing.route, addresses)
            child_envelope = Envelope(
                outgoing.mail_from, outgoing.recipients, entry.record.envelope.params
            )
            child = await self.received.hand_off(
                entry, target, key, child_envelope, outgoing.content
            )
            children.append(child)
            for address in addresses:
                work.set(address, RecipientStatus.DELIVERED)
            log.debug(  # the spool's info line ``spool.added`` says it (parent, stage)
                "agent.handed_off",
                queue_id=entry.queue_id,
                child=child,
                stage=target.name,
                recipients=len(addresses),
                protection=outgoing.protection,
            )
        return children

    # -- DSNs and the end of the pass --------------------------------------------------

    async def _queue_dsns(self, entry: Claimed, content: bytes, work: Pass) -> list[str]:
        sent: list[str] = []
        for reports, action, postal in (
            (work.failures, Action.FAILED, False),
            (work.posted, Action.RELAYED, True),
        ):
            due = [
                report
                for report in reports
                if should_send_dsn(
                    action,
                    work.recipient(report.final_recipient).notify,
                    entry.record.envelope.mail_from,
                    postal=postal,
                )
            ]
            if due:
                child = await self._queue_dsn(entry, content, due, action)
                if child is not None:
                    sent.append(child)
        return sent

    async def _queue_dsn(
        self, entry: Claimed, content: bytes, reports: list[RecipientReport], action: Action
    ) -> str | None:
        sender = entry.record.envelope.mail_from
        return await notices.queue_dsn(
            source=self.received,
            received=self.received,
            entry=entry,
            original=content,
            reports=reports,
            key=handoff_key(f"dsn-{action.value}", None, (r.final_recipient for r in reports)),
            hostname=self.config.gateway.hostname,
            language=self.config.gateway.language,
            now=self.clock(),
            protected=not routing.is_local(self.config, sender),
            ret=entry.record.envelope.params.ret,
            area="agent",
        )

    async def _finish(
        self, entry: Claimed, work: Pass, handoffs: list[str], dsns: list[str]
    ) -> EntryOutcome:
        if work.unfinished:
            due = min(s.next_attempt for s in work.states if s.next_attempt is not None)
            await self.received.defer(entry, due, work.states)
            disposition = "deferred"
        elif work.delivered_any:
            await self.received.complete(entry, work.states)
            disposition = "completed"
        else:
            await self.received.bounce(entry, "no recipient could be served", work.states)
            disposition = "bounced"
        return EntryOutcome(entry.queue_id, disposition, tuple(handoffs), tuple(dsns))


# -- the worker process ----------------------------------------------------------------


async def run_agent_worker(config: Config, stop: asyncio.Event) -> None:
    """``missive worker agent``: build the stage from ``config`` and run it until ``stop``.

    ``config`` must have been loaded with ``agent_keys=True``. The audit sink, spool
    and directory connections are this process's own and are closed on the way out."""
    from gateway.app import revocation_cache  # the composition root's path rule

    validator = CertificateValidator.from_files(
        config.trust.anchors,
        config.trust.intermediates,
        config.trust.crls,
        config.trust.revocation,
        cache_dir=revocation_cache(config),
    )
    directory = open_directory(config.annuaire, anchors=config.trust.anchors)
    lookup = CertificateLookup.from_config(config, directory, validator)
    agent = build_secure_agent(config, lookup, validator)
    audit = AuditSink(config.audit.path, gather_window=STAGE_GATHER_WINDOW)
    audit.start()
    try:
        spool = Spool(
            config.gateway.spool_dir,
            audit=audit,
            actor="secure-agent",
            max_message_size=config.delivery.max_message_size,
            io_threads=config.gateway.spool_io_threads,  # 0: on the loop (spool.runtime)
        )
        try:
            stage = AgentStage(config, spool, agent, lookup, audit)
            await stage.run(stop)
        finally:
            await spool.aclose()
    finally:
        await directory.close()
        await audit.aclose()
    log.info("agent.stopped")
