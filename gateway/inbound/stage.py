"""The inbound agent stage: ``inbound/`` in, ``local/``, hold and DSN out.

Role (issue 7 items 1, 2 and 6): the consumer of the spool's ``inbound`` queue. At start
it recovers the queue (consumer lock, ``active/`` back to ``incoming/``), then loops:
claim an entry, read it, and for each recipient without a final status *separately*
run ``process_inbound`` with that recipient's own decryption keys
(``KeyStore.decryption_keys(address)``), so two local recipients each get a copy opened
with their own key and never one opened with the other's.

- ``DELIVER`` / ``PASS_MARKED`` -> the processed copy is handed off to ``local`` with a
  deterministic key per recipient (``handoff_key("local", None, [address])``): a pass
  repeated after a crash writes nothing twice;
- ``HOLD`` -> the recipient stays pending (its record notes the public reason) and a
  failure DSN goes to the sender (``Reason.UNDECRYPTABLE``, status 5.7.5, RFC 3463
  "cryptographic failure"), built with ``protected=True`` from the message *as
  received* (never from decrypted content; the one public text of
  ``PUBLIC_DECRYPT_ERROR`` is the only cause shown, RFC 3218 §2.3). No DSN to the null
  sender (RFC 3461 §6.1) nor when NOTIFY says otherwise. Once every other recipient is
  handed off, the entry itself goes to ``hold/`` (quarantine: the spool's 0700
  directory; only ``missive queue release`` moves it on, and a released entry is
  processed again for its held recipients only; the DSN's hand-off key is the same, so
  it is not sent twice while the entry stays in the spool);
- MDNs (issue 7 item 5, RFC 8098): after a ``DELIVER`` / ``PASS_MARKED`` hand-off, when
  the delivered copy asks for one, a *processed* MDN is queued into ``received``
  (``queue_mdn``). That part (to whom, what is dropped and audited, why in clear) moved
  to ``gateway.inbound.mdn_queue`` with its docstring (session 7 split, a pure move);
  this module re-exports its public names;
- a record written by an older gateway may list one mailbox twice (new entries list
  each once: ``spool.model.mailbox_key``): one occurrence decides for the mailbox, an
  occurrence already final if there is one (never a second copy), else the first; it
  alone is opened, audited, handed off and reported, and every other occurrence takes
  its state, as the secure agent does (``gateway.relay.agent_pass``);
- one ``inbound.processed`` audit event per recipient: decision, key serial, signer
  and its validity, cipher, key transport, where the headers came from. The precise
  cause of a failure (``AuditFacts.failure_detail``) goes to the local log only.

Invariants (as ``gateway.relay.agent_stage``): every write (hand-offs, DSN) happens
before the entry leaves ``active/``; a content failing its SHA-256 check ->
``Queue.quarantine`` (``corrupt/``); any other exception (the validator's, which
``process_inbound`` lets through) -> the entry is held with a generic reason so one
bad message never stops the worker; spool and audit errors leave the entry in
``active/`` for the next start.

Throughput (issue 7 Speed): each pass waits on fsyncs (the ``local/`` hand-off, the
completion of the ``inbound/`` entry: the spool's group commit) and on the audit
trail's ``synchronous = FULL`` commits, so ``concurrency`` entries (default 32) are in
flight at once and share those commits, as in ``gateway.relay.agent_stage`` (32 rather
than 16, session 10: bigger groups; a small gain, within this VM's noise: one agent
alone spent 1.56-1.74 ms of loop CPU per message against 1.65-1.81, end to end 257-321
msg/s against 271-293 in four pairs); at most ``LARGE_CONCURRENCY`` (4) of them are larger than
``READ_AHEAD`` (1 MB), as each is held whole in memory beside its decrypted copy
(``consumer.consume``: about 28 MB + 4 x the largest message, where 16 of any size
could take 16 x);
decryption and verification run on the loop for an ordinary message and in a worker
thread above ``gateway.crypto_calls.INLINE_LIMIT`` (measured there), so a large one does
not hold the other entries' I/O; a verification that needs a CRL or an OCSP answer from
the network runs again in a thread (``inbound_validator``: never a fetch on the loop).
Entries are independent: the order in which they finish is not the order they were
claimed in, and nothing relies on it (each hand-off key depends on its own entry and
recipient only). ``drain`` (tests, tools) bounds the count only (``consumer.drain``).

Trust level: runs in the inbound worker (``missive worker inbound``), which loads the
S/MIME private keys and listens on no socket. Decrypted content exists only in memory
and in ``local/`` (docs/spool.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.audit import STAGE_GATHER_WINDOW, AuditEvent, AuditSink
from gateway.config import Config
from gateway.crypto_calls import OffLoopFetcher, run_crypto
from gateway.inbound.mdn_queue import (
    MAX_DROPPED_LOGGED,
    MAX_DROPPED_SHOWN,
    MDN_NOT_SENDER,
    MDN_WITHHELD,
    queue_mdn,
)
from gateway.inbound.process import (
    AuditFacts,
    Decision,
    InboundPolicy,
    InboundResult,
    process_inbound,
)
from gateway.log import get_logger
from gateway.relay import notices
from gateway.relay.agent_stage import handoff_key
from gateway.relay.dsn import should_send_dsn
from gateway.relay.dsn_recipients import Action, Reason, RecipientReport
from gateway.relay.mdn import Disposition
from gateway.smime.fetch import HttpFetcher
from gateway.smime.keystore import KeyStore
from gateway.smime.types import ChainValidator
from gateway.smime.validate import CertificateValidator
from gateway.spool import (
    INBOUND,
    LOCAL,
    RECEIVED,
    AuditTrail,
    Claimed,
    Envelope,
    Queue,
    RecipientState,
    RecipientStatus,
    Spool,
    consumer,
)
from gateway.spool.model import mailbox_key
from gateway.spool.queue import READ_AHEAD

log = get_logger("inbound.stage")

DEFAULT_POLL_INTERVAL = 0.2
DEFAULT_CONCURRENCY = 32  # entries in flight: the spool and audit group their fsyncs
LARGE_CONCURRENCY = 4  # of which larger than READ_AHEAD (1 MB), each held whole in memory
STATUS_CRYPTO_FAILURE = "5.7.5"  # RFC 3463: cryptographic failure
HELD_REASON = "held in quarantine: the message could not be decrypted or verified"

__all__ = [  # with the public names moved to gateway.inbound.mdn_queue, importable here
    "DEFAULT_CONCURRENCY",
    "DEFAULT_POLL_INTERVAL",
    "HELD_REASON",
    "MAX_DROPPED_LOGGED",
    "MAX_DROPPED_SHOWN",
    "MDN_NOT_SENDER",
    "MDN_WITHHELD",
    "STATUS_CRYPTO_FAILURE",
    "InboundOutcome",
    "InboundStage",
    "queue_mdn",
    "run_inbound_worker",
]


@dataclass(frozen=True)
class InboundOutcome:
    """The end of one pass over one entry (for logs and tests)."""

    queue_id: str
    disposition: str  # "completed" | "held" | "corrupt"
    handoffs: tuple[str, ...] = ()
    dsn: str | None = None
    mdns: tuple[str, ...] = ()


class InboundStage:
    """The consumer of ``inbound`` (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        spool: Spool,
        keystore: KeyStore,
        validator: ChainValidator | None,
        audit: AuditTrail,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.config = config
        self.spool = spool
        self.keystore = keystore
        self.validator = validator
        self.audit = audit
        self.clock = clock
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.policy = InboundPolicy(
            unknown_key=config.inbound.unknown_key,
            unsigned_cbc=config.inbound.unsigned_cbc,
            accept_3des=config.smime.accept_3des,
        )
        self.inbound: Queue = spool.queue(INBOUND)
        self.local: Queue = spool.queue(LOCAL)
        self.received: Queue = spool.queue(RECEIVED)

    # -- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Recover (standby while another inbound agent holds the lock), then claim and
        process entries, ``concurrency`` at once, until ``stop`` is set."""
        if (
            await consumer.take_queue(self.inbound, stop, area="inbound", who="inbound agent")
            is None
        ):
            return
        await consumer.consume(
            self.inbound,
            stop,
            self.process_entry,
            poll_interval=self.poll_interval,
            concurrency=self.concurrency,
            large_concurrency=LARGE_CONCURRENCY,
        )

    async def drain(self) -> list[InboundOutcome]:
        """Process every entry ready now, ``concurrency`` at once, outcomes in the order
        they finished (tests, tools); ``recover`` must have run."""
        return await consumer.drain(
            self.inbound,
            self.process_entry,
            concurrency=self.concurrency,
            read_ahead=READ_AHEAD,
        )

    # -- one entry ---------------------------------------------------------------------

    async def process_entry(self, entry: Claimed) -> InboundOutcome | None:
        """One pass over a claimed entry; never raises for a bad message (None when the
        spool or the audit failed: the entry stays in ``active/``)."""
        return await consumer.guarded(
            self.inbound,
            entry,
            self._process,
            area="inbound",
            what="inbound agent",
            held=lambda queue_id: InboundOutcome(queue_id, "held"),
        )

    async def _process(self, entry: Claimed) -> InboundOutcome:
        content = await consumer.content_or_quarantine(self.inbound, entry)
        if content is None:
            return InboundOutcome(entry.queue_id, "corrupt")
        record = entry.record
        states = list(record.state.recipients)
        handoffs: list[str] = []
        mdns: list[str] = []
        held: list[RecipientReport] = []
        deciding = _deciding_occurrences(record.envelope, states)
        for index in record.unfinished:
            if deciding[index] != index:
                continue  # another RCPT of the same mailbox decides: its state, below
            recipient = record.envelope.recipients[index]
            result = await run_crypto(len(content), self._open_for, content, recipient.address)
            await self.audit.record(_processed_event(entry, result))
            attempts = states[index].attempts + 1
            if result.decision is Decision.HOLD:
                log.warning(
                    "inbound.held",
                    queue_id=entry.queue_id,
                    reason=result.reason,
                    detail=result.facts.failure_detail,
                )
                states[index] = RecipientState(RecipientStatus.PENDING, attempts, result.reason)
                if should_send_dsn(Action.FAILED, recipient.notify, record.envelope.mail_from):
                    held.append(self._held_report(recipient.address, recipient.orcpt))
                continue
            child_envelope = Envelope(
                record.envelope.mail_from, (recipient,), record.envelope.params
            )
            key = handoff_key("local", None, [recipient.address])
            child = await self.inbound.hand_off(
                entry, self.local, key, child_envelope, result.message
            )
            handoffs.append(child)
            states[index] = RecipientState(RecipientStatus.DELIVERED, attempts)
            mdn = await queue_mdn(
                self.config,
                self.inbound,
                self.received,
                entry,
                result.message,
                recipient,
                Disposition.PROCESSED,
                self.clock(),
                audit=self.audit,
                actor="inbound-agent",
            )
            if mdn is not None:
                mdns.append(mdn)
        for index in record.unfinished:
            states[index] = states[deciding[index]]
        dsn = await self._queue_dsn(entry, content, held) if held else None
        if any(not state.status.final for state in states):
            await self._hold(entry, states)
            return InboundOutcome(entry.queue_id, "held", tuple(handoffs), dsn, tuple(mdns))
        await self.inbound.complete(entry, states)
        return InboundOutcome(entry.queue_id, "completed", tuple(handoffs), dsn, tuple(mdns))

    def _open_for(self, content: bytes, address: str) -> InboundResult:
        return process_inbound(
            content,
            address,
            keys=self.keystore.decryption_keys(address),
            validator=self.validator,
            policy=self.policy,
            hostname=self.config.gateway.hostname,
        )

    def _held_report(self, address: str, orcpt: str | None) -> RecipientReport:
        return RecipientReport(
            address,
            Action.FAILED,
            STATUS_CRYPTO_FAILURE,
            original_recipient=orcpt,
            last_attempt=self.clock(),
            reason=Reason.UNDECRYPTABLE,
        )

    async def _hold(self, entry: Claimed, states: Sequence[RecipientState]) -> None:
        """The entry to ``hold/`` with the new per-recipient states (quarantine)."""
        updated = Claimed(
            entry.stage,
            entry.queue_id,
            entry.path,
            entry.record.with_state(self.clock(), states),
            entry.claimed_from,
        )
        await self.inbound.hold(updated, HELD_REASON)

    async def _queue_dsn(
        self, entry: Claimed, content: bytes, reports: list[RecipientReport]
    ) -> str | None:
        return await notices.queue_dsn(
            source=self.inbound,
            received=self.received,
            entry=entry,
            original=content,
            reports=reports,
            key=handoff_key("dsn-held", None, (r.final_recipient for r in reports)),
            hostname=self.config.gateway.hostname,
            language=self.config.gateway.language,
            now=self.clock(),
            protected=True,
            ret="HDRS",  # never the body, whatever RET asked (nothing decrypted)
            area="inbound",
        )


def _deciding_occurrences(envelope: Envelope, states: Sequence[RecipientState]) -> list[int]:
    """For each recipient index, the index whose outcome its mailbox shares: an
    occurrence already final if there is one, else the first (module docstring:
    records of older gateways)."""
    keys = [mailbox_key(recipient.address) for recipient in envelope.recipients]
    chosen: dict[str, int] = {}
    for index, key in enumerate(keys):
        current = chosen.get(key)
        if current is None or (states[index].status.final and not states[current].status.final):
            chosen[key] = index
    return [chosen[key] for key in keys]


def _processed_event(entry: Claimed, result: InboundResult) -> AuditEvent:
    facts: AuditFacts = result.facts
    serials = tuple(s for s in (facts.key_serial, facts.signer_serial) if s)
    algorithms = tuple(a for a in (facts.cipher, facts.key_transport) if a)
    details = {
        "decision": result.decision.value,
        "encrypted": _yes_no(facts.encrypted),
        "decrypted": _yes_no(facts.decrypted),
        "signature": facts.signature.value,
        "weak": _yes_no(facts.weak),
        "header_source": facts.header_source,
    }
    optional = {
        "key_serial": facts.key_serial,
        "signer": facts.signer,
        "signer_serial": facts.signer_serial,
        "signature_reason": facts.signature_reason,
        "cipher": facts.cipher,
        "reason": result.reason,
    }
    details.update({name: value for name, value in optional.items() if value})
    return AuditEvent(
        type="inbound.processed",
        queue_id=entry.queue_id,
        mail_from=entry.record.envelope.mail_from,
        rcpt_to=(facts.recipient,),
        actor="inbound-agent",
        cert_serials=serials,
        algorithms=algorithms,
        outcome=result.decision.value,
        details=details,
    )


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


# -- the worker process ----------------------------------------------------------------


def inbound_validator(config: Config) -> CertificateValidator:
    """The inbound agent's chain validator (``[trust]``): its revocation fetches refuse
    to run on the event loop (``OffLoopFetcher``), so a verification that needs the
    network is run again in a thread (``gateway.crypto_calls``)."""
    from gateway.app import revocation_cache  # the composition root's path rule

    return CertificateValidator.from_files(
        config.trust.anchors,
        config.trust.intermediates,
        config.trust.crls,
        config.trust.revocation,
        cache_dir=revocation_cache(config),
        fetcher=OffLoopFetcher(HttpFetcher()),
    )


async def run_inbound_worker(config: Config, stop: asyncio.Event) -> None:
    """``missive worker inbound``: build the stage from ``config`` and run it until
    ``stop``. ``config`` must have been loaded with ``agent_keys=True`` (private keys)."""
    validator = inbound_validator(config)
    keystore = KeyStore.load(config.keys.dir)
    audit = AuditSink(config.audit.path, gather_window=STAGE_GATHER_WINDOW)
    audit.start()
    try:
        spool = Spool(
            config.gateway.spool_dir,
            audit=audit,
            actor="inbound-agent",
            max_message_size=config.delivery.max_message_size,
            io_threads=config.gateway.spool_io_threads,  # 0: on the loop (spool.runtime)
        )
        try:
            stage = InboundStage(config, spool, keystore, validator, audit)
            await _run_with_quarantine_sweeper(stage, config, stop)
        finally:
            await spool.aclose()
    finally:
        await audit.aclose()
    log.info("inbound.stopped")


async def _run_with_quarantine_sweeper(
    stage: InboundStage, config: Config, stop: asyncio.Event
) -> None:
    """Run ``stage`` and, in the worker of consumer slot 0 only (one sweeper per spool,
    not one per inbound agent), the quarantine retention sweeper beside it."""
    from gateway.inbound.quarantine import run_quarantine_sweeper  # it imports this module

    if stage.inbound.slot != 0:
        await stage.run(stop)
        return
    retention = config.inbound.quarantine_retention
    sweeper = asyncio.create_task(run_quarantine_sweeper(stage.inbound, retention, stop))
    try:
        await stage.run(stop)
    finally:
        if not stop.is_set():  # the stage failed: stop the sweeper; else it ends on its own
            sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
