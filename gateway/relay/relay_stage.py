"""The relay stage: deliver each ``relay/<route>`` queue entry to its next hop, with retries
and delivery status notifications.

Role: the consumer of every ``relay/<route>`` queue of an ``smtp`` route (ARCHITECTURE,
outbound flow; issue 6 items 2-3, 6). For each claimed entry (``incoming/``, or
``deferred/`` once its time has come: ``Queue.claim`` returns both) it sends the
message with ``RelayClient`` (an entry up to ``notices.WHOLE_READ_LIMIT`` is read and
its SHA-256 checked in one I/O job before any connection, so a corrupt one is
quarantined without a byte sent; a larger one is streamed from ``Queue.content``), then
decides per recipient (``plan_attempt``, sans-IO):

- a 2xx after the end of DATA: ``delivered``. No "delivered" DSN of our own: when the
  peer took the DSN parameters the NOTIFY went on with the message and a success DSN is
  the final MTA's to send (RFC 3461 §5.2.1); when it did not, and NOTIFY has SUCCESS, a
  ``relayed`` DSN (RFC 3461 §5.2.2);
- a 5xx: ``failed`` and a failure DSN (unless NOTIFY says otherwise);
- anything else (4xx, no host reachable, a TLS failure, an unknown error - STYLE 6:
  unknown is temporary): ``deferred`` to ``RetryPolicy.next_attempt`` (with jitter);
  once ``max_lifetime`` is over (counted from the first acceptance, RFC 5321 §4.5.4.1),
  ``failed`` with status 5.4.7 and a failure DSN;
- a ``delayed`` DSN (RFC 3461 §5.2.5, RFC 3464 §2.3.3: status 4.x.x, Will-Retry-Until)
  once per entry, at the first failed attempt that comes after ``delay_warning``
  (counted from the first acceptance, as Postfix's ``delay_warning_time``); that it was
  sent is kept in the entry's note (``DELAY_WARNED_NOTE``), which every later defer
  carries on (the spool offers no per-recipient flag; every recipient still deferred
  is reported in that one DSN, and a recipient cannot become deferred later).

Every DSN is built by ``gateway.relay.dsn.build_dsn`` from the header block of what we
send (on an ``smime`` route that is already the encrypted message whose outer Subject
is ``[...]``), always with ``protected=True``, and queued into ``received`` with
``dsn_envelope`` (MAIL FROM:<>): a DSN is a message the gateway sends through its own
queue. No DSN ever goes to the null reverse-path (``should_send_dsn``).

Invariants (crash safety, ``docs/spool.md``):

- each DSN is handed off *before* the entry is deferred, completed or bounced, under a
  key made of the entry's revision, the action and the recipients it reports
  (``Notice.key``); after a crash the entry is claimed again with the same revision,
  and a repeated DSN finds its child already queued: the same outcome of the same
  revision is never queued twice (only the error path of ``_defer_after_error``, after
  a failed hand-off, can repeat a DSN that was queued before the failure);
- the entry leaves ``active/`` only through ``defer``, ``complete``, ``bounce`` or
  ``quarantine``; a crash or a stop in the middle leaves it in ``active/`` and
  ``recover`` moves it back at the next start: delivery is at-least-once, a duplicate
  only when the crash falls between the peer's 250 and our commit;
- each stage is worked by one consumer (``consumer.lock``): a second relay worker waits,
  polling the lock, and takes over when the first one stops (hot standby);
- bounded work: at most ``max_in_flight`` entries at once per worker; connection reuse
  and ``concurrency_per_destination`` are the client's.

Audit: one ``relay.attempt`` event per delivery attempt of a group of recipients
(route, MX host, TLS version, peer DN and certificate serial, per-recipient outcome,
SHA-256 of the content sent); the spool records ``deferred``/``completed``/``bounced``.
Nothing of the content, and no Subject, is logged or audited.

Trust level: holds the gateway's TLS client key (through ``RelayClient``) and talks to
next hops; it reads messages that are already protected (S/MIME on ``smime`` routes)
and loads no S/MIME private key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.app import revocation_cache
from gateway.audit import AuditEvent, AuditSink
from gateway.config import Config
from gateway.config.model import Language, Route
from gateway.log import get_logger
from gateway.relay.client import RelayClient
from gateway.relay.dsn import should_send_dsn
from gateway.relay.dsn_recipients import Action, Reason, RecipientReport
from gateway.relay.mx import MxResolver, make_resolver
from gateway.relay.notices import WHOLE_READ_LIMIT, queue_dsn
from gateway.relay.smtp_data import ContentSource
from gateway.relay.smtp_reply import DeliveryResult, Outcome
from gateway.relay.tlsclient import PeerVerifier
from gateway.smime.validate import CertificateValidator
from gateway.smtp.listeblanche import load_liste_blanche
from gateway.spool import (
    RECEIVED,
    Claimed,
    CorruptEntry,
    Envelope,
    Queue,
    QueueRecord,
    Recipient,
    RecipientState,
    RecipientStatus,
    RetryPolicy,
    Spool,
    SpoolBusy,
    relay_stage,
)

_log = get_logger("relay.stage")

ACTOR = "relay"
DELAY_WARNED_NOTE = "delay-warned"
EXPIRED_STATUS = "5.4.7"  # RFC 3463: delivery time expired
DEFAULT_POLL_INTERVAL = 0.05  # seconds between two looks at an empty queue (a listdir)
DEFAULT_LOCK_RETRY = 2.0  # seconds between two tries of a stage lock held elsewhere
DEFAULT_MAX_IN_FLIGHT = 32  # entries one worker delivers at once, all routes together
STOP_GRACE = 10.0  # seconds in-flight deliveries may finish after stop
MAX_AUDITED_RECIPIENTS = 24  # per-recipient details of one event (the trail allows 32)
MAX_AUDITED_RCPT_TO = 1000  # the trail's MAX_ITEMS
_MAX_DETAIL = 300  # characters of a peer's reply kept in the trail or a record


# -- sans-IO: what one attempt decides -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempted:
    """One recipient's result in this attempt, with the delivery that produced it."""

    outcome: Outcome
    result: DeliveryResult


@dataclass(frozen=True, slots=True)
class Notice:
    """One DSN to queue: an action and the recipients (by RCPT index) it reports."""

    action: Action
    indexes: tuple[int, ...]
    reports: tuple[RecipientReport, ...]

    def key(self, revision: int) -> str:
        """The hand-off key: the same outcome of the same revision -> the same child."""
        listed = ",".join(map(str, self.indexes)).encode("ascii")
        digest = hashlib.sha256(listed).hexdigest()[:16]
        return f"dsn-{self.action.value}-r{revision}-{digest}"


@dataclass(frozen=True, slots=True)
class AttemptPlan:
    """The new per-recipient states, the DSNs to queue, and where the entry goes next."""

    states: tuple[RecipientState, ...]
    notices: tuple[Notice, ...]
    next_attempt: datetime | None  # None: every recipient is final
    note: str | None

    @property
    def any_delivered(self) -> bool:
        return any(state.status is RecipientStatus.DELIVERED for state in self.states)


@dataclass(frozen=True, slots=True)
class Timing:
    """The clock and rules one decision needs."""

    now: datetime
    policy: RetryPolicy
    delay_warning: timedelta
    rng: random.Random | None = None


def reply_text(outcome: Outcome) -> str:
    """``550 5.1.1 text``: the reply as kept in a record, a DSN and the trail (bounded)."""
    words = outcome.text
    if not words.startswith(outcome.enhanced):  # the peer's reply text carries its code
        words = f"{outcome.enhanced} {words}"
    return f"{outcome.code} {words}".strip()[:_MAX_DETAIL]


def _status_of_class(enhanced: str, klass: str) -> str:
    """``enhanced`` with its class digit forced (a peer may answer 550 4.x.x)."""
    return klass + enhanced[1:]


def _delay_warned(record: QueueRecord) -> bool:
    return record.state.note == DELAY_WARNED_NOTE


def plan_attempt(
    record: QueueRecord, attempted: Mapping[int, Attempted], timing: Timing
) -> AttemptPlan:
    """Decide the outcome of one attempt (see the module docstring); no I/O.

    ``attempted`` maps RCPT indexes to their result; recipients not in it keep their
    state (already final, or not tried this time).
    """
    builder = _PlanBuilder(record, timing)
    for index, (recipient, state) in enumerate(record.recipients):
        tried = attempted.get(index)
        builder.states.append(
            state if tried is None else builder.decide(index, recipient, state, tried)
        )
    return builder.finish()


@dataclass
class _PlanBuilder:
    record: QueueRecord
    timing: Timing
    states: list[RecipientState] = field(default_factory=list)
    reports: dict[Action, list[tuple[int, RecipientReport]]] = field(default_factory=dict)
    last_outcome: dict[int, Attempted] = field(default_factory=dict)

    def decide(
        self, index: int, recipient: Recipient, state: RecipientState, tried: Attempted
    ) -> RecipientState:
        outcome, attempts = tried.outcome, state.attempts + 1
        self.last_outcome[index] = tried
        if outcome.delivered:
            if not tried.result.dsn_passed:
                self._report(index, recipient, Action.RELAYED, "2.0.0", tried)
            return RecipientState(RecipientStatus.DELIVERED, attempts, None, None)
        error = reply_text(outcome)
        if outcome.permanent:
            status = _status_of_class(outcome.enhanced, "5")
            self._report(index, recipient, Action.FAILED, status, tried)
            return RecipientState(RecipientStatus.FAILED, attempts, error, None)
        timing = self.timing
        until = timing.policy.next_attempt(attempts, self.record.received, timing.now, timing.rng)
        if until is None:
            self._report(index, recipient, Action.FAILED, EXPIRED_STATUS, tried, Reason.EXPIRED)
            expired = f"{error} (gave up: max_lifetime reached)"[:_MAX_DETAIL]
            return RecipientState(RecipientStatus.FAILED, attempts, expired, None)
        return RecipientState(RecipientStatus.DEFERRED, attempts, error, until)

    def _report(
        self,
        index: int,
        recipient: Recipient,
        action: Action,
        status: str,
        tried: Attempted,
        reason: Reason | None = None,
    ) -> None:
        if not should_send_dsn(action, recipient.notify, self.record.envelope.mail_from):
            return
        report = RecipientReport(
            final_recipient=recipient.address,
            action=action,
            status=status,
            original_recipient=recipient.orcpt,
            remote_mta=tried.result.mx_host,
            diagnostic=reply_text(tried.outcome) if tried.result.mx_host else None,
            last_attempt=self.timing.now,
            reason=reason or _reason_without_peer(tried),
        )
        self.reports.setdefault(action, []).append((index, report))

    def _delay_notice(self) -> bool:
        """Add the ``delayed`` reports when due; True if the warning is now given."""
        record, timing = self.record, self.timing
        deferred = [i for i, s in enumerate(self.states) if s.status is RecipientStatus.DEFERRED]
        if not deferred or _delay_warned(record):
            return _delay_warned(record)
        if timing.now - record.received < timing.delay_warning:
            return False
        until = timing.policy.expires(record.received)
        for index in deferred:
            recipient = record.envelope.recipients[index]
            tried = self.last_outcome.get(index)
            if tried is None or not should_send_dsn(
                Action.DELAYED, recipient.notify, record.envelope.mail_from
            ):
                continue
            report = RecipientReport(
                final_recipient=recipient.address,
                action=Action.DELAYED,
                status=_status_of_class(tried.outcome.enhanced, "4"),
                original_recipient=recipient.orcpt,
                remote_mta=tried.result.mx_host,
                diagnostic=reply_text(tried.outcome) if tried.result.mx_host else None,
                last_attempt=timing.now,
                will_retry_until=until,
                reason=_reason_without_peer(tried) or Reason.REMOTE_TEMPORARY,
            )
            self.reports.setdefault(Action.DELAYED, []).append((index, report))
        return True

    def finish(self) -> AttemptPlan:
        warned = self._delay_notice()
        notices = tuple(
            Notice(action, tuple(i for i, _ in items), tuple(r for _, r in items))
            for action, items in self.reports.items()
        )
        pending = [s.next_attempt for s in self.states if not s.status.final]
        next_attempt = min((t for t in pending if t is not None), default=None)
        if pending and next_attempt is None:  # a recipient never tried: try it now
            next_attempt = self.timing.now
        return AttemptPlan(
            tuple(self.states), notices, next_attempt, DELAY_WARNED_NOTE if warned else None
        )


def _reason_without_peer(tried: Attempted) -> Reason | None:
    """No peer answered: say whether the secure connection was the cause (x.7.x)."""
    if tried.result.mx_host is None and tried.outcome.enhanced[2:4] == "7.":
        return Reason.SECURE_CONNECTION
    return None


def delivery_groups(route: Route, record: QueueRecord) -> list[tuple[int, ...]]:
    """RCPT indexes still to deliver, grouped: one group for a static next hop, one per
    recipient domain for an MX route (the client delivers one domain at a time)."""
    groups: dict[str, list[int]] = {}
    for index, (recipient, state) in enumerate(record.recipients):
        if state.status.final:
            continue
        domain = "" if route.next_hop is not None else recipient.address.rpartition("@")[2].lower()
        groups.setdefault(domain, []).append(index)
    return [tuple(indexes) for _, indexes in sorted(groups.items())]


def attempt_event(
    route: Route,
    record: QueueRecord,
    indexes: Sequence[int],
    result: DeliveryResult,
) -> AuditEvent:
    """The ``relay.attempt`` audit event of one delivery (no content, no Subject)."""
    recipients = [record.envelope.recipients[i].address for i in indexes]
    outcomes = [result.per_recipient[address] for address in recipients]
    # Every value bounded, so that no envelope or peer can make the event invalid (an
    # event that cannot be recorded would send the entry round again: a duplicate).
    kinds = {
        "delivered" if o.delivered else "failed" if o.permanent else "deferred" for o in outcomes
    }
    details: dict[str, str] = {
        "route": route.name,
        "mx_host": result.mx_host or "",
        "tls_version": result.tls_version or "none",
        "peer_verified": "yes" if result.peer_verified else "no",
        "auth": (result.auth_user or "none")[:_MAX_DETAIL],  # the login, never a password
        "dsn_passed": "yes" if result.dsn_passed else "no",
    }
    if result.attempts:
        details["hosts_failed"] = "; ".join(result.attempts)[:1000]
    for position, (address, outcome) in enumerate(zip(recipients, outcomes, strict=True)):
        if position == MAX_AUDITED_RECIPIENTS:
            details["rcpt.more"] = str(len(recipients) - position)
            break
        details[f"rcpt.{position}"] = f"{address[:_MAX_DETAIL]} {reply_text(outcome)}"
    return AuditEvent(
        "relay.attempt",
        queue_id=record.queue_id,
        mail_from=record.envelope.mail_from,
        rcpt_to=tuple(address[:_MAX_DETAIL] for address in recipients[:MAX_AUDITED_RCPT_TO]),
        actor=ACTOR,
        peer=result.peer_dn[:1000] if result.peer_dn else None,
        cert_serials=(result.peer_cert_serial,) if result.peer_cert_serial else (),
        outcome=kinds.pop() if len(kinds) == 1 else "mixed",
        sha256=record.content_sha256,
        details=details,
    )


# -- the stage -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What the stage needs besides its collaborators (from ``[gateway]``/``[delivery]``)."""

    hostname: str
    language: Language
    policy: RetryPolicy
    delay_warning: timedelta
    poll_interval: float = DEFAULT_POLL_INTERVAL
    lock_retry: float = DEFAULT_LOCK_RETRY
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT

    @classmethod
    def from_config(cls, config: Config) -> RelaySettings:
        return cls(
            hostname=config.gateway.hostname,
            language=config.gateway.language,
            policy=RetryPolicy.from_config(config.delivery),
            delay_warning=config.delivery.delay_warning,
        )


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RelayStage:
    """Serves the relay queues of the ``smtp`` routes with one ``RelayClient``."""

    def __init__(
        self,
        *,
        routes: Sequence[Route],
        spool: Spool,
        audit: AuditSink,
        client: RelayClient,
        settings: RelaySettings,
        clock: Callable[[], datetime] = _utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._routes = tuple(r for r in routes if r.transport == "smtp")
        self._spool = spool
        self._audit = audit
        self._client = client
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._received = spool.queue(RECEIVED)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve every route until ``stop`` is set; then let deliveries in flight finish
        (``STOP_GRACE``), cancel the rest (they stay in ``active/`` for ``recover``)."""
        try:
            async with asyncio.TaskGroup() as group:
                for route in self._routes:
                    group.create_task(self._serve_route(route, stop))
        finally:
            await self._drain()

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _serve_route(self, route: Route, stop: asyncio.Event) -> None:
        queue = self._spool.queue(relay_stage(route.name))
        if not await self._take_stage(queue, route, stop):
            return
        while not stop.is_set():
            await self._slots.acquire()
            if stop.is_set():
                self._slots.release()
                break
            try:
                entry = await queue.claim(read_ahead=WHOLE_READ_LIMIT)
            except BaseException:
                self._slots.release()
                raise
            if entry is None:
                self._slots.release()
                await _wait(stop, self._settings.poll_interval)
                continue
            task = asyncio.create_task(self._process_slot(queue, route, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _take_stage(self, queue: Queue, route: Route, stop: asyncio.Event) -> bool:
        """``recover`` the stage (its consumer lock); wait while another worker holds it."""
        waiting_logged = False
        while not stop.is_set():
            try:
                report = await queue.recover()
            except SpoolBusy:
                if not waiting_logged:
                    _log.info("relay.standby", route=route.name)
                    waiting_logged = True
                await _wait(stop, self._settings.lock_retry)
                continue
            _log.info("relay.serving", route=route.name, recovered=len(report.requeued))
            return True
        return False

    async def _process_slot(self, queue: Queue, route: Route, entry: Claimed) -> None:
        try:
            await self.process(queue, route, entry)
        except Exception as error:  # noqa: BLE001 - one entry must not stop the stage
            _log.error(
                "relay.entry_error", route=route.name, queue_id=entry.queue_id, error=repr(error)
            )
            await self._defer_after_error(queue, entry)
        finally:
            self._slots.release()

    async def _defer_after_error(self, queue: Queue, entry: Claimed) -> None:
        """Put an entry whose processing failed (spool or audit trouble) back in
        ``deferred/`` unchanged, so it is tried again rather than stuck in ``active/``
        until a restart; if even that fails, ``recover`` will find it there."""
        until = self._clock() + self._settings.policy.delay(1)
        try:
            await queue.defer(entry, until, note=entry.record.state.note)
        except Exception as error:  # noqa: BLE001 - logged; recover() is the last resort
            _log.error("relay.defer_failed", queue_id=entry.queue_id, error=repr(error))

    async def process(self, queue: Queue, route: Route, entry: Claimed) -> None:
        """Deliver one claimed entry and move it on (defer, complete or bounce)."""
        record = entry.record
        attempted: dict[int, Attempted] = {}
        try:
            content = await _content_source(queue, entry)
            for indexes in delivery_groups(route, record):
                result = await self._deliver(route, entry, indexes, content)
                await self._audit.record(attempt_event(route, record, indexes, result))
                for index in indexes:
                    address = record.envelope.recipients[index].address
                    attempted[index] = Attempted(result.per_recipient[address], result)
        except CorruptEntry as error:
            await queue.quarantine(entry, error.reason)
            return
        settings = self._settings
        timing = Timing(self._clock(), settings.policy, settings.delay_warning, self._rng)
        plan = plan_attempt(record, attempted, timing)
        await self._queue_notices(queue, entry, plan.notices, timing.now)
        await self._move_on(queue, entry, plan)

    async def _deliver(
        self, route: Route, entry: Claimed, indexes: Sequence[int], content: ContentSource
    ) -> DeliveryResult:
        record = entry.record
        recipients = tuple(record.envelope.recipients[i] for i in indexes)
        envelope = Envelope(record.envelope.mail_from, recipients, record.envelope.params)
        try:
            return await self._client.deliver(route, envelope, content, size=record.content_length)
        except CorruptEntry:
            raise
        except Exception as error:  # noqa: BLE001 - STYLE 6: unknown errors are temporary
            _log.error("relay.deliver_error", route=route.name, error=repr(error))
            outcome = Outcome.temporary("local error while delivering; will retry", "4.3.0")
            return DeliveryResult({r.address: outcome for r in recipients})

    async def _queue_notices(
        self, queue: Queue, entry: Claimed, notices: Sequence[Notice], now: datetime
    ) -> None:
        if not notices:
            return
        record = entry.record
        headers = await asyncio.to_thread(_read_headers, entry)
        for notice in notices:
            await queue_dsn(
                source=queue,
                received=self._received,
                entry=entry,
                original=headers,
                reports=notice.reports,
                key=notice.key(record.state.revision),
                hostname=self._settings.hostname,
                language=self._settings.language,
                now=now,
                protected=True,
                ret=record.envelope.params.ret,
                area="relay",
            )

    async def _move_on(self, queue: Queue, entry: Claimed, plan: AttemptPlan) -> None:
        if plan.next_attempt is not None:
            await queue.defer(entry, plan.next_attempt, plan.states, note=plan.note)
        elif plan.any_delivered:
            await queue.complete(entry, plan.states)
        else:
            await queue.bounce(entry, "every recipient failed", plan.states)


async def _content_source(queue: Queue, entry: Claimed) -> ContentSource:
    """What the client sends: an entry up to ``WHOLE_READ_LIMIT`` is read (and its
    SHA-256 checked, ``CorruptEntry``) in one I/O job before any connection, then sent
    from memory at each attempt; a larger one is streamed from the spool per attempt."""
    if entry.record.content_length > WHOLE_READ_LIMIT:
        return lambda: queue.content(entry)
    data = await queue.read_all(entry)

    async def from_memory() -> AsyncIterator[bytes]:
        yield data

    return from_memory


def _read_headers(entry: Claimed) -> bytes:
    with entry.open() as reader:
        headers, _complete = reader.headers()
    return headers


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


# -- the worker ----------------------------------------------------------------------------


def build_client(config: Config, *, mx_port: int | None = None) -> RelayClient:
    """The relay's SMTP client from ``config`` (validator with the revocation cache, liste
    blanche, DNS resolver of ``gateway.nameservers``). Reads files: call before serving."""
    trust = config.trust
    validator = CertificateValidator.from_files(
        trust.anchors,
        trust.intermediates,
        trust.crls,
        trust.revocation,
        cache_dir=revocation_cache(config),
    )
    liste_blanche = (
        load_liste_blanche(trust.liste_blanche) if trust.liste_blanche is not None else None
    )
    resolver = make_resolver(config.gateway.nameservers)
    mx = MxResolver(resolver) if mx_port is None else MxResolver(resolver, mx_port=mx_port)
    return RelayClient(
        helo_name=config.gateway.hostname,
        tls=config.tls,
        trust=trust,
        resolver=mx,
        verifier=PeerVerifier(validator, liste_blanche),
        concurrency_per_destination=config.delivery.concurrency_per_destination,
    )


async def run_relay_worker(config: Config, stop: asyncio.Event) -> None:
    """Serve every ``relay/<route>`` queue of ``config`` until ``stop`` is set.

    Builds its own objects (a worker process owns them): the audit sink, the spool
    (actor ``relay``), the client. Returns after the in-flight deliveries finished or
    were cancelled; closes everything it opened, also on error.
    """
    client = await asyncio.to_thread(build_client, config)
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
            stage = RelayStage(
                routes=config.routes,
                spool=spool,
                audit=audit,
                client=client,
                settings=RelaySettings.from_config(config),
            )
            await stage.run(stop)
        finally:
            await client.close()
            await spool.aclose()
    finally:
        await audit.aclose()
