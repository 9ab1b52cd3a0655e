"""The audit sink: the one writer of the trail, cheap for the hot path, durable on return.

Role: every stage hands its events here. ``await sink.record(event)`` resolves once
the record is *committed* (and, with ``synchronous = FULL``, on disk), so a stage can
order its own acknowledgement after it: the SMTP front records ``smtp.accepted`` and
only then answers ``250``; if the commit fails, ``record`` raises ``AuditWriteError``
and the front answers ``451`` instead (fail closed: nothing is accepted untraced).
``append(event)`` is the blocking form for code outside the event loop, ``submit`` the
non-blocking one that returns a ``concurrent.futures.Future``.

Design (group commit): a dedicated writer thread owns the SQLite connection. Callers
put ``(event, waiter)`` pairs into a bounded inbox; the thread takes everything that
is waiting (up to ``max_batch``), seals the records in order and commits them in one
transaction (one WAL fsync for the whole batch), then settles the waiters: one
``call_soon_threadsafe`` per event loop per batch, not one per event. While a commit
is on disk the next batch accumulates, so the fsync cost per record falls as load
rises; a producer signals the writer only when it sleeps waiting for items (a busy
writer takes them with its next batch), so a queued event costs a lock and an append.
The loop thread only validates, stamps the time and enqueues; hashing, encoding and
SQLite run in the writer thread (SQLite releases the GIL while it does I/O).

Group commit window (session 10), for the stage workers: a commit is dear
(``BEGIN IMMEDIATE`` against the other processes sharing the trail, the WAL append, its
fsync: about 0.2 ms of CPU on the development VM, against some 40 us per record in a
large batch, ``bench/bench_audit``), and a stage worker's records trickle in one at a
time, each between two decryptions: without a wait, two commits of three held a single
record in ``bench/bench_inbound``. So a sink built with ``gather_window`` (the workers
pass ``STAGE_GATHER_WINDOW``, 10 ms), when its previous batch held ``n`` records and
fewer are waiting once the first has come, waits up to that long for ``n`` of them and
commits at once when they are there. A lone sequential caller (a batch of one each
time) never waits; ``n`` grows under load (everything waiting is taken) and shrinks
when the window passes with fewer. Measured in ``bench/bench_inbound``: 1.9 commits per
message became about 0.7, and an inbound agent's audit writer went from 0.43-0.57 to
0.18-0.20 ms of CPU per message (bench/README, "Tenth session"). The cost is
latency, up to 10 ms more per ``record`` while the worker is busy: nothing for a worker
with many entries in flight, but an SMTP client waits for its ``250``, so the front
(``missive serve``) keeps no window (default 0), and its many sessions fill its
batches anyway.

Cost on the caller's loop (paid for every event of every stage): the time is read
from the clock and queued next to the event (the writer seals the record at that
time) instead of copying the event to set it; the waiter is the loop's own future
(its loop is ``future.get_loop()``); the sleeping writer is woken by releasing a
plain lock that it waits on, not through a ``threading.Condition`` (whose ``notify``
and ``wait`` are Python code that allocates a lock per wait).

Invariants:

- one writer thread per sink, records committed in the order they were queued;
- the inbox is bounded (``capacity``): when full, ``record`` awaits room (a future the
  writer resolves; the loop is never blocked), ``submit``/``append`` block;
- ``close()`` stops taking events, commits everything already queued, then closes the
  database; events recorded before ``start()`` or after ``close()`` raise
  ``AuditSinkClosed`` (never a wait that nobody will end);
- a cancelled ``record`` (client gone) may still be committed: the trail may contain
  an event whose caller did not wait for it, never the reverse;
- the time of an event is stamped when it is handed over, not when it is committed.

Trust level: runs inside every gateway process that writes the trail; it holds no
secret and writes only what callers give it (validated ``AuditEvent``s).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType

from gateway.audit.errors import AuditSinkClosed, AuditWriteError
from gateway.audit.event import AuditEvent, utc_now, utc_time
from gateway.audit.record import AuditReceipt
from gateway.audit.store import DEFAULT_BUSY_TIMEOUT, AuditStore, Synchronous
from gateway.log import get_logger

DEFAULT_MAX_BATCH = 512
DEFAULT_CAPACITY = 10_000
STAGE_GATHER_WINDOW = 0.010  # seconds a stage worker's group may wait to fill (docstring)
MAX_GATHER_WINDOW = 600.0  # seconds: below threading.TIMEOUT_MAX (a larger one kills the writer)

_log = get_logger("audit")

Outcome = AuditReceipt | BaseException


# an event loop's future (settled in its loop) or a thread's future (settled directly)
Waiter = asyncio.Future[AuditReceipt] | concurrent.futures.Future[AuditReceipt]
Pending = tuple[AuditEvent, datetime, Waiter]  # the event, its record time, who waits


def _settle_loop_futures(outcomes: list[tuple[asyncio.Future[AuditReceipt], Outcome]]) -> None:
    """Runs in the event loop: resolve each future that is still waited for."""
    for future, outcome in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _settle_thread_future(
    future: concurrent.futures.Future[AuditReceipt], outcome: Outcome
) -> None:
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:  # cancelled by its caller meanwhile
        pass


def _settle(batch: list[Pending], outcomes: list[Outcome]) -> None:
    """Resolve the waiters of a committed (or failed) batch: one wake-up per loop."""
    per_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditReceipt], Outcome]]]
    per_loop = collections.defaultdict(list)
    for (_, _, waiter), outcome in zip(batch, outcomes, strict=True):
        if isinstance(waiter, concurrent.futures.Future):
            _settle_thread_future(waiter, outcome)
        else:  # a loop's future: settled in its loop's thread only
            per_loop[waiter.get_loop()].append((waiter, outcome))
    for loop, items in per_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_loop_futures, items)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            continue


class _Inbox:
    """A bounded FIFO between producers and the writer thread; taken in batches.

    Threads wait for room on a condition; event-loop producers register a future that
    the writer settles (``call_soon_threadsafe``) once it has taken items, so a full
    inbox never parks executor threads that the rest of the gateway needs.

    One taker (the writer thread): when it finds nothing it marks itself waiting and
    sleeps on ``_wakeup``, a lock kept held that the producer bringing the count of
    waiting items up to ``_wake_at`` (1, or the group it gathers: ``take``), or
    ``close``, releases once, under ``_lock``, clearing the mark; a release that comes
    before the taker reaches ``acquire`` makes that ``acquire`` return at once, so no
    wake-up is lost, and there is never a second release of a free lock (a gathering
    wait that times out takes the lock back if a producer released it meanwhile).
    """

    def __init__(self, capacity: int) -> None:
        self._items: collections.deque[Pending] = collections.deque()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._full_waiters = 0  # threads blocked in put(): only then notify _not_full
        self._room_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closed = True  # until the writer thread runs: nobody would take the items
        self._taker_waiting = False  # the writer sleeps on _wakeup: release it once
        self._wake_at = 1  # ... when this many items wait (more while gathering a batch)
        self._wakeup = threading.Lock()
        self._wakeup.acquire()  # held while nobody is to be woken

    def _wake_taker(self) -> None:
        """Wake the sleeping taker (call under ``_lock``); a busy one takes the items
        with its next batch, unsignalled."""
        if self._taker_waiting:
            self._taker_waiting = False
            self._wakeup.release()

    def _append(self, item: Pending) -> None:
        if self._closed:
            raise AuditSinkClosed("the audit sink is not running")
        self._items.append(item)
        if len(self._items) >= self._wake_at:
            self._wake_taker()

    def put(self, item: Pending) -> None:
        """Queue ``item``, blocking while full; ``AuditSinkClosed`` if not running."""
        with self._lock:
            while not self._closed and len(self._items) >= self._capacity:
                self._full_waiters += 1
                try:
                    self._not_full.wait()
                finally:
                    self._full_waiters -= 1
            self._append(item)

    def put_or_wait(
        self, item: Pending, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[None] | None:
        """Queue ``item`` now (None), or return a future that resolves when there may be
        room (call it again then). Called in ``loop``'s thread."""
        with self._lock:
            if self._closed or len(self._items) < self._capacity:
                self._append(item)
                return None
            room: asyncio.Future[None] = loop.create_future()
            self._room_waiters.append((loop, room))
            return room

    def take(self, limit: int, expect: int = 1, within: float = 0.0) -> list[Pending] | None:
        """Wait for items and take up to ``limit``; None once closed and drained.
        When fewer than ``expect`` are waiting once the first has come, wait up to
        ``within`` seconds more for that many (the group commit window: module
        docstring). Called by the one taker thread only (see the class docstring)."""
        with self._lock:
            while not self._items and not self._closed:
                self._sleep(1, None)
            wanted = min(expect, limit)
            if within > 0 and not self._closed and len(self._items) < wanted:
                self._sleep(wanted, within)
            items = self._items
            if not items:
                return None
            if len(items) <= limit:
                batch = list(items)
                items.clear()
            else:
                batch = [items.popleft() for _ in range(limit)]
            self._wake_producers()
            return batch

    def _sleep(self, count: int, timeout: float | None) -> None:
        """Sleep (under ``_lock``, released meanwhile) until ``count`` items wait, the
        inbox closes or ``timeout`` passes. A producer that releases ``_wakeup`` after
        the timeout but before ``_lock`` is taken back leaves it free: it is acquired
        again here, so it is held whenever nobody is to be woken."""
        self._taker_waiting = True
        self._wake_at = count
        self._lock.release()
        try:
            woken = self._wakeup.acquire(timeout=-1 if timeout is None else timeout)
        finally:
            self._lock.acquire()
        if not woken:
            if self._taker_waiting:
                self._taker_waiting = False  # nobody released it: it is still held
            else:
                self._wakeup.acquire()  # released meanwhile: returns at once

    def _wake_producers(self) -> None:
        if self._full_waiters:
            self._not_full.notify_all()
        waiters, self._room_waiters = self._room_waiters, []
        for loop, room in waiters:
            try:
                loop.call_soon_threadsafe(_resolve_room, room)
            except RuntimeError:  # that loop is closed
                continue

    def open(self) -> None:
        with self._lock:
            self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake_taker()
            self._wake_producers()


def _resolve_room(room: asyncio.Future[None]) -> None:
    if not room.done():
        room.set_result(None)


class AuditSink:
    """The trail's single writer (see the module docstring). Start it, record, close it."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Synchronous = "FULL",
        max_batch: int = DEFAULT_MAX_BATCH,
        capacity: int = DEFAULT_CAPACITY,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        gather_window: float = 0.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if max_batch < 1 or capacity < 1:
            raise ValueError("max_batch and capacity must be positive")
        if not 0 <= gather_window <= MAX_GATHER_WINDOW:  # NaN fails too
            raise ValueError(f"gather_window must be between 0 and {MAX_GATHER_WINDOW} s")
        self.path = path
        self._synchronous: Synchronous = synchronous
        self._max_batch = max_batch
        self._gather = gather_window
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._inbox = _Inbox(capacity)
        self._thread: threading.Thread | None = None
        self._store: AuditStore | None = None
        self.commits = 0  # transactions committed (written by the writer thread only)
        self.committed = 0  # records committed; committed / commits = mean group size

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Open (or create) the database and start the writer thread.

        Raises ``AuditDatabaseError`` here, in the caller, if the trail cannot be opened.
        """
        if self._thread is not None:
            raise RuntimeError("the audit sink is already started")
        self._store = AuditStore.open_writer(
            self.path, synchronous=self._synchronous, busy_timeout=self._busy_timeout
        )
        self._inbox.open()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        _log.info("audit.sink.started", path=str(self.path), synchronous=self._synchronous)

    def close(self) -> None:
        """Commit what is queued, stop the thread, close the database (idempotent)."""
        self._inbox.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
            _log.info("audit.sink.stopped", path=str(self.path))

    async def aclose(self) -> None:
        """``close`` without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def __enter__(self) -> AuditSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> AuditSink:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- recording ---------------------------------------------------------------------

    def _time_of(self, event: AuditEvent) -> datetime:
        """The record's time: the event's own, else now. ``ValueError`` for the
        trail's reserved types, here in the caller."""
        if event.reserved:
            raise ValueError(f"audit event type {event.type!r} is reserved for the trail")
        return event.time if event.time is not None else utc_time(self._clock())

    async def record(self, event: AuditEvent) -> AuditReceipt:
        """Queue ``event`` and wait until it is committed; ``AuditWriteError`` if not."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AuditReceipt] = loop.create_future()
        item: Pending = (event, self._time_of(event), future)
        while (room := self._inbox.put_or_wait(item, loop)) is not None:
            await room
        return await future

    def submit(self, event: AuditEvent) -> concurrent.futures.Future[AuditReceipt]:
        """Queue ``event`` (blocking while the inbox is full); the future resolves on commit."""
        future: concurrent.futures.Future[AuditReceipt] = concurrent.futures.Future()
        self._inbox.put((event, self._time_of(event), future))
        return future

    def append(self, event: AuditEvent, timeout: float | None = None) -> AuditReceipt:
        """Record ``event`` and block until it is committed. Not for the event loop's
        thread (use ``await record``): ``RuntimeError`` there."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.submit(event).result(timeout)
        raise RuntimeError("AuditSink.append would block the event loop: await record()")

    # -- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        store = self._store
        assert store is not None
        try:
            expect = 1  # the previous batch's size: how many a full group holds now
            while (batch := self._inbox.take(self._max_batch, expect, self._gather)) is not None:
                expect = len(batch)
                _settle(batch, self._commit(store, batch))
        finally:
            store.close()

    def _commit(self, store: AuditStore, batch: list[Pending]) -> list[Outcome]:
        try:
            receipts = store.append_stamped([(event, moment) for event, moment, _ in batch])
        except Exception as error:  # noqa: BLE001 - every waiter must hear back, or it hangs
            _log.error("audit.write_failed", records=len(batch), error=type(error).__name__)
            reason = f"audit record not committed: {error}"
            return [AuditWriteError(reason) for _ in batch]
        self.commits += 1
        self.committed += len(receipts)
        return list(receipts)
