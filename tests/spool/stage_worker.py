"""A stage process for the crash and concurrency tests.

Run as ``python -m tests.spool.stage_worker SCENARIO SPOOL AUDIT_DB COUNT [SLOT]`` (SLOT:
the consumer slot every queue of the process uses, default 0), optionally with
``MISSIVE_CRASH_AT=<checkpoint>:<n>`` to die at the n-th time that step is reached
(exit status ``CRASH_STATUS``; nothing is flushed or closed, like ``kill -9`` for the
spool's purposes: the page cache survives, the process does not).

Scenarios (each prints one line per acknowledged step, flushed at once):

- ``add``: the SMTP front: adds COUNT messages to ``received``; ``ACK <id> <n>`` is the
  ``250`` of message n.
- ``handoff``: the secure agent: recovers ``received``, then claims each entry, hands
  it to ``relay/r`` (content ``signed:`` + original) and completes it;
  ``DONE <parent> <child>``.
- ``deliver``: the relay: recovers ``relay/r``, claims each entry and completes it
  (the peer said ``250``); ``DELIVERED <id>``.
- ``defer``: the relay: recovers ``relay/r``, claims each entry and defers it one hour;
  ``DEFERRED <id>``.
- ``hold-one``: claims one entry of ``received`` (``CLAIMED <id>``), keeps it in
  ``active/`` until a line arrives on stdin, then defers it (due at once); ``DEFERRED``.
- ``churn``: COUNT claim attempts on ``received``; each claimed entry is deferred with
  a due time in the past, so entries keep moving between ``incoming/``, ``active/``
  and ``deferred/`` while operator commands run against them; ``ROUNDS <n>``.
- ``hold-then-drain``: one of several consumers of ``received``: takes the queue as its
  slot (``take_queue``, standby while the slot is busy; ``RECOVERED <ids...>``), claims
  COUNT entries and keeps them in its active directory (``CLAIMED <id>`` each, then
  ``HOLDING``) until a line arrives on stdin, then completes them and every entry it
  can still claim (``DONE <id>`` each) and says ``EMPTY``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

from gateway.audit import AuditSink
from gateway.spool import (
    RECEIVED,
    Claimed,
    Queue,
    RecipientState,
    RecipientStatus,
    Spool,
    relay_stage,
)
from gateway.spool.consumer import take_queue
from gateway.spool.runtime import Checkpoint, no_checkpoint
from gateway.spool.spooldir import consumer_slot_scope

from .support import envelope, message, origin

CRASH_STATUS = 86
RELAY = relay_stage("r")


def crash_checkpoint(spec: str | None) -> Checkpoint:
    if not spec:
        return no_checkpoint
    name, _, nth = spec.partition(":")
    target = int(nth or "1")
    seen = 0

    def checkpoint(step: str) -> None:
        nonlocal seen
        if step == name:
            seen += 1
            if seen == target:
                os._exit(CRASH_STATUS)

    return checkpoint


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def add(spool: Spool, count: int) -> None:
    queue = spool.queue(RECEIVED)
    for number in range(count):
        queue_id = await queue.add(envelope(), origin(), message(number))
        say(f"ACK {queue_id} {number}")


async def handoff(spool: Spool, count: int) -> None:
    received, relay = spool.queue(RECEIVED), spool.queue(RELAY)
    await received.recover(stale_after=timedelta(0))
    while (entry := await received.claim()) is not None:
        content = b"signed:" + b"".join([chunk async for chunk in received.content(entry)])
        child = await received.hand_off(entry, relay, "route-r", entry.record.envelope, content)
        done = [RecipientState(RecipientStatus.DELIVERED, 1)] * len(
            entry.record.envelope.recipients
        )
        await received.complete(entry, done)
        say(f"DONE {entry.queue_id} {child}")


async def deliver(spool: Spool, count: int) -> None:
    relay = spool.queue(RELAY)
    await relay.recover(stale_after=timedelta(0))
    while (entry := await relay.claim()) is not None:
        done = [RecipientState(RecipientStatus.DELIVERED, 1)] * len(
            entry.record.envelope.recipients
        )
        await relay.complete(entry, done)
        say(f"DELIVERED {entry.queue_id}")


async def defer(spool: Spool, count: int) -> None:
    relay = spool.queue(RELAY)
    await relay.recover(stale_after=timedelta(0))
    while (entry := await relay.claim()) is not None:
        state = RecipientState(RecipientStatus.DEFERRED, 1, "451 4.4.1 no answer")
        until = entry.record.created + timedelta(hours=1)
        await relay.defer(entry, until, [state] * len(entry.record.envelope.recipients))
        say(f"DEFERRED {entry.queue_id}")


async def hold_one(spool: Spool, count: int) -> None:
    queue = spool.queue(RECEIVED)
    entry = await queue.claim()
    assert entry is not None
    say(f"CLAIMED {entry.queue_id}")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await queue.defer(entry, entry.record.created, entry.record.state.recipients)
    say(f"DEFERRED {entry.queue_id}")


async def churn(spool: Spool, count: int) -> None:
    queue = spool.queue(RECEIVED)
    claimed = 0
    for _ in range(count):
        entry = await queue.claim()
        if entry is None:
            await asyncio.sleep(0.005)  # everything held: look again later
            continue
        claimed += 1
        past = entry.record.created - timedelta(seconds=1)
        await queue.defer(entry, past, entry.record.state.recipients)
    say(f"ROUNDS {claimed}")


async def hold_then_drain(spool: Spool, count: int) -> None:
    queue = spool.queue(RECEIVED)
    report = await take_queue(queue, asyncio.Event(), area="test", who="test consumer")
    assert report is not None
    say(" ".join(["RECOVERED", *report.requeued]))
    held = []
    for _ in range(count):
        entry = await queue.claim()
        assert entry is not None, "fewer entries than asked to hold"
        held.append(entry)
        say(f"CLAIMED {entry.queue_id}")
    say("HOLDING")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for entry in held:
        await complete(queue, entry)
    while (entry := await queue.claim()) is not None:
        await complete(queue, entry)
    say("EMPTY")


async def complete(queue: Queue, entry: Claimed) -> None:
    done = [RecipientState(RecipientStatus.DELIVERED, 1)] * len(entry.record.envelope.recipients)
    await queue.complete(entry, done)
    say(f"DONE {entry.queue_id}")


SCENARIOS = {
    "add": add,
    "handoff": handoff,
    "deliver": deliver,
    "defer": defer,
    "hold-one": hold_one,
    "churn": churn,
    "hold-then-drain": hold_then_drain,
}


async def main(scenario: str, spool_dir: Path, audit_db: Path, count: int, slot: int) -> None:
    checkpoint = crash_checkpoint(os.environ.get("MISSIVE_CRASH_AT"))
    with consumer_slot_scope(slot):
        await run(scenario, spool_dir, audit_db, count, checkpoint)


async def run(
    scenario: str, spool_dir: Path, audit_db: Path, count: int, checkpoint: Checkpoint
) -> None:
    async with AuditSink(audit_db) as sink:
        spool = Spool(
            spool_dir,
            audit=sink,
            actor=f"crash-{scenario}",
            max_message_size=1 << 20,
            checkpoint=checkpoint,
        )
        async with spool:
            await SCENARIOS[scenario](spool, count)


if __name__ == "__main__":
    slot_arg = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), slot_arg))
