"""The relay stage: deliver each ``relay/<route>`` queue entry to its next hop, with retries
and delivery status notifications.

Role: the consumer of every ``relay/<route>`` queue of an ``smtp`` route (ARCHITECTURE,
outbound flow; issue 6 items 2-3, 6). For each claimed entry (``incoming/``, or
``deferred/`` once its time has come: ``Queue.claim`` returns both) it sends the
message with ``RelayClient`` (an entry up to ``notices.WHOLE_READ_LIMIT`` is read and
its SHA-256 checked in one I/O job before any connection, so a corrupt one is
quarantined without a byte sent; a larger one is streamed from ``Queue.content``), then
lets ``gateway.relay.attempt_plan.plan_attempt`` (sans-IO) decide per recipient:
delivered, failed or deferred, and which DSNs to send (``relayed``, ``failed``, one
``delayed`` per entry); the rules and their RFC sections are in that module's
docstring. The audit event of each attempt is built by ``gateway.relay.attempt_audit``.
This module imports those two, never the reverse.

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
(``attempt_audit``); the spool records ``deferred``/``completed``/``bounced``.
Nothing of the content, and no Subject, is logged or audited.

Trust level: holds the gateway's TLS client key (through ``RelayClient``) and talks to
next hops; it reads messages that are already protected (S/MIME on ``smime`` routes)
and loads no S/MIME private key.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.app import revocation_cache
from gateway.audit import STAGE_GATHER_WINDOW, AuditSink
from gateway.config import Config
from gateway.config.model import Language, Route
from gateway.log import get_logger
from gateway.relay.attempt_audit import ACTOR, attempt_event
from gateway.relay.attempt_plan import (
    Attempted,
    AttemptPlan,
    Notice,
    Timing,
    delivery_groups,
    plan_attempt,
)
from gateway.relay.client import RelayClient
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
    RetryPolicy,
    Spool,
    SpoolBusy,
    relay_stage,
)
from gateway.spool.layout import RELAY_PREFIX

_log = get_logger("relay.stage")

DEFAULT_POLL_INTERVAL = 0.05  # seconds between two looks at an empty queue (a listdir)
DEFAULT_LOCK_RETRY = 2.0  # seconds between two tries of a stage lock held elsewhere
DEFAULT_MAX_IN_FLIGHT = 32  # entries one worker delivers at once, all routes together
STOP_GRACE = 10.0  # seconds in-flight deliveries may finish after stop


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
        (``STOP_GRACE``), cancel the rest (they stay in ``active/`` for ``recover``).
        The queue of a route no longer configured is served too (``_removed_routes``)."""
        try:
            async with asyncio.TaskGroup() as group:
                for route in self._routes:
                    group.create_task(self._serve_route(route, stop))
                for name in self._removed_routes():
                    group.create_task(self._serve_route(_RemovedRoute(name), stop))
        finally:
            await self._drain()

    def _removed_routes(self) -> list[str]:
        """The routes whose ``relay/<name>`` queue is on disk but which are no longer
        configured as ``smtp`` routes. Their entries are never delivered (nothing says
        where any more) but are not forgotten either: each pass defers them with a
        4.3.5 reply, so the retry schedule, the delayed DSN and, at ``max_lifetime``,
        the failure DSN apply to them as to any other (Postfix does the same with mail
        for a transport removed from its configuration)."""
        served = {relay_stage(route.name) for route in self._routes}
        on_disk = self._spool.stages()
        removed = [stage for stage in on_disk if stage.startswith(RELAY_PREFIX)]
        names = [stage.removeprefix(RELAY_PREFIX) for stage in removed if stage not in served]
        for name in names:
            _log.error("relay.route_removed", route=name)
        return names

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _serve_route(self, route: Route | _RemovedRoute, stop: asyncio.Event) -> None:
        queue = self._spool.queue(relay_stage(route.name))
        if not await self._take_stage(queue, route, stop):
            return
        while not stop.is_set():
            await queue.sweep_if_due()
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

    async def _take_stage(
        self, queue: Queue, route: Route | _RemovedRoute, stop: asyncio.Event
    ) -> bool:
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

    async def _process_slot(
        self, queue: Queue, route: Route | _RemovedRoute, entry: Claimed
    ) -> None:
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

    async def process(self, queue: Queue, route: Route | _RemovedRoute, entry: Claimed) -> None:
        """Deliver one claimed entry and move it on (defer, complete or bounce)."""
        record = entry.record
        attempted: dict[int, Attempted] = {}
        if isinstance(route, _RemovedRoute):
            attempted = route.nothing_delivered(record)
            await self._move_on_after(queue, entry, attempted)
            return
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
        await self._move_on_after(queue, entry, attempted)

    async def _move_on_after(
        self, queue: Queue, entry: Claimed, attempted: dict[int, Attempted]
    ) -> None:
        """Plan what follows these outcomes (``attempt_plan``), queue its DSNs, move on."""
        record = entry.record
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


@dataclass(frozen=True)
class _RemovedRoute:
    """A ``relay/<name>`` queue whose route is no longer configured (``_removed_routes``):
    its entries get a temporary failure for every recipient still to be served."""

    name: str

    def nothing_delivered(self, record: QueueRecord) -> dict[int, Attempted]:
        outcome = Outcome.temporary(f"route {self.name} is no longer configured", "4.3.5")
        recipients = record.envelope.recipients
        result = DeliveryResult({recipients[i].address: outcome for i in record.unfinished})
        return {index: Attempted(outcome, result) for index in record.unfinished}


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
    audit = AuditSink(config.audit.path, gather_window=STAGE_GATHER_WINDOW)
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
