"""The consumer loop every stage worker shares: take a queue, claim, process, repeat.

One stage (secure agent, inbound agent, local delivery) consumes one queue. This module
holds what they do alike, so each stage module keeps only what it decides:

- ``take_queue``: ``recover`` the queue, which takes the lock of its consumer slot;
  while another worker holds that slot, wait as a standby (logged once) until it is
  free or ``stop`` is set. Workers of *different* slots consume the same queue at once
  (``gateway.spool.queue``; the slot comes from the ``Spool``, set by
  ``missive worker ... --slot K``), so the secure and inbound agents can use every core.
  A lock path that is not a regular file (``UnsafeLockFile``: a planted symbolic link,
  say) is not waited on: it goes up and stops the worker with exit status 2
  (``gateway.spool.stagefiles.ConsumerLock``);
- ``consume``: claim ready entries and process them, at most ``concurrency`` at once
  (and, when given, at most ``large_concurrency`` of those larger than ``read_ahead``),
  polling every ``poll_interval`` when the queue is empty; in-flight entries finish when
  ``stop`` is set;
- ``drain``: process every entry ready now, at most ``concurrency`` at once (tests and
  tools);
- ``read_ahead``: ``consume`` claims with ``READ_AHEAD`` by default, because every
  stage worker that uses it reads each entry's whole content first
  (``content_or_quarantine``): the claim reads an entry up to that size in the same
  I/O job (one thread hop and one open less per entry; ``gateway.spool.queue``); pass
  0 for a stage that does not. ``drain`` (tests, tools) reads ahead only when asked;
  with 0 it calls a bare ``claim()``, so a test double of a queue needs no more;
- ``content_or_quarantine``: a claimed entry's content, or its move to ``corrupt/``
  when its checksum fails;
- ``guarded``: run one entry's processing so that a bad message never stops the worker:
  a spool or audit failure leaves the entry in ``active/`` (recovered at the next start);
  any other error puts the entry on hold with a reason naming the error type (never the
  message content), and a failing hold also leaves it in ``active/``.

Trust level: no I/O of its own beyond the queue's; no message content is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.log import get_logger
from gateway.spool.errors import CorruptEntry, SpoolBusy, SpoolError
from gateway.spool.queue import READ_AHEAD, Claimed, Queue, RecoveryReport

T = TypeVar("T")

STANDBY_INTERVAL = 1.0  # seconds between attempts to take the consumer lock

_log = get_logger("stage")


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def take_queue(
    queue: Queue, stop: asyncio.Event, *, area: str, who: str
) -> RecoveryReport | None:
    """Recover ``queue`` once its consumer lock is ours; None if stopped while waiting;
    ``UnsafeLockFile`` (not waited on) if a lock path is not a regular file.

    ``area`` prefixes the log event (``<area>.standby``); ``who`` names the worker kind in
    the standby reason."""
    announced = False
    while not stop.is_set():
        try:
            return await queue.recover()
        except SpoolBusy:
            if not announced:
                _log.info(
                    f"{area}.standby",
                    reason=f"another {who} consumes {queue.name}/ as slot {queue.slot}",
                )
                announced = True
            await sleep_unless(stop, STANDBY_INTERVAL)
    return None


async def consume(
    queue: Queue,
    stop: asyncio.Event,
    process: Callable[[Claimed], Awaitable[object]],
    *,
    poll_interval: float,
    concurrency: int = 1,
    read_ahead: int = READ_AHEAD,
    large_concurrency: int | None = None,
) -> None:
    """Claim and ``process`` entries until ``stop`` is set (``take_queue`` first).

    With ``large_concurrency``, an entry whose content is larger than ``read_ahead``
    (one the claim did not read: ``process`` will hold it whole) also needs one of that
    many slots: many small entries in flight, few large ones, so memory stays bounded
    by about ``concurrency`` x ``read_ahead`` + ``large_concurrency`` x the largest
    message. While no such slot is free, claiming pauses (the claimed entry waits)."""
    large_limit = concurrency if large_concurrency is None else large_concurrency
    if large_limit < 1:
        raise ValueError("large_concurrency must be at least 1")
    running: set[asyncio.Task[object]] = set()
    large: set[asyncio.Task[object]] = set()
    try:
        while not stop.is_set():
            await queue.sweep_if_due()
            if len(running) >= concurrency:
                running = await _after_one_finished(running)
                continue
            entry = await queue.claim(read_ahead=read_ahead)
            if entry is None:
                await sleep_unless(stop, poll_interval)
                continue
            is_large = entry.record.content_length > read_ahead
            while is_large and len(large) >= large_limit:  # never, without large_concurrency
                large = await _after_one_finished(large)
            task = asyncio.ensure_future(process(entry))
            running.add(task)
            if is_large:
                large.add(task)
            running = {task for task in running if not task.done()}
    finally:
        if running:
            await asyncio.gather(*running, return_exceptions=True)


async def _after_one_finished(tasks: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Wait until one of ``tasks`` is done; those still running."""
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    return {task for task in tasks if not task.done()}


async def drain(
    queue: Queue,
    process: Callable[[Claimed], Awaitable[T | None]],
    *,
    concurrency: int = 1,
    read_ahead: int = 0,
) -> list[T]:
    """Process every entry ready now, at most ``concurrency`` at once; the outcomes (None
    ones left out) in the order they finished. ``recover`` must have run (tests, tools).

    Claims stop at the first empty claim; every started entry finishes before this
    returns, even on cancellation (as in ``consume``). ``process`` must not raise
    (``guarded``)."""
    outcomes: list[T] = []
    running: set[asyncio.Task[T | None]] = set()
    exhausted = False
    try:
        while True:
            while not exhausted and len(running) < concurrency:
                entry = await (queue.claim(read_ahead=read_ahead) if read_ahead else queue.claim())
                if entry is None:
                    exhausted = True
                else:
                    running.add(asyncio.ensure_future(process(entry)))
            if not running:
                return outcomes
            finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            outcomes.extend(o for task in finished if (o := task.result()) is not None)
    finally:
        if running:
            await asyncio.gather(*running, return_exceptions=True)


async def content_or_quarantine(queue: Queue, entry: Claimed) -> bytes | None:
    """``entry``'s whole content (``Queue.read_all``), or None once an entry whose bytes
    fail their checksum is moved to ``corrupt/`` (never deleted)."""
    try:
        return await queue.read_all(entry)
    except CorruptEntry as error:
        await queue.quarantine(entry, str(error))
        return None


async def guarded(
    queue: Queue,
    entry: Claimed,
    process: Callable[[Claimed], Awaitable[T]],
    *,
    area: str,
    what: str,
    held: Callable[[str], T],
) -> T | None:
    """``process(entry)``, never raising for a bad message (see the module docstring).

    ``area`` prefixes the log events; ``what`` names the stage in the hold reason
    (``"<what> error: <ExceptionType>"``); ``held(queue_id)`` builds the outcome of an
    entry put on hold. Returns None when the entry stays in ``active/``."""
    try:
        return await process(entry)
    except (SpoolError, OSError) as error:
        _log.error(f"{area}.spool_error", queue_id=entry.queue_id, error=str(error))
        return None
    except Exception as error:  # noqa: BLE001 - a bad message must not stop the worker
        reason = f"{what} error: {type(error).__name__}"
        _log.error(f"{area}.entry_failed", queue_id=entry.queue_id, error=reason)
        try:
            await queue.hold(entry, reason)
        except Exception as hold_error:  # noqa: BLE001 - stays in active/, recovered
            _log.error(f"{area}.hold_failed", queue_id=entry.queue_id, error=str(hold_error))
            return None
        return held(entry.queue_id)
