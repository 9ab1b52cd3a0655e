"""Benchmark of several consumer processes on one stage queue (consumer slots).

Usage: ``python bench/bench_consumers.py [--smoke] [--entries N] [--messages M]
[--runs R] [--no-agent] [--dir DIR]``.

Issue 6 (Speed) and ARCHITECTURE ("crypto can use every core"): the secure agent and
the inbound agent may run as several processes, each in its consumer slot
(``gateway.spool.queue``, ``[gateway] crypto_workers``). Two cases, each run with 1 and
then 2 consumer processes in the same invocation; the 1-process run is the baseline
and the figure to read is the ratio of the 2-process run to it (the machine is shared
and noisy; a ratio holds better than a rate):

- **spool claim+complete**: N entries of 10 KB in ``received/``; K processes
  (``--consumer`` mode of this file, slots 0..K-1) each take the queue
  (``take_queue``), say they are ready, then on "go" claim, read the content (its
  SHA-256 checked) and complete each entry, 16 in flight per process as the agent
  does, until the queue is empty. Wall time from "go" to the last process's exit.
  The audit trail is a no-op here: this measures the spool alone.
- **secure agent sign+encrypt** (unless ``--no-agent``): the shipped configuration
  (``bench_outbound.prepare_site``: dev PKI, demo annuaire, route to clinique-b.test
  without TLS, ``copy_to_sender = false``), M messages of 10 KB from a local sender
  to one clinique-b.test recipient written straight into ``received/``; then K real
  ``missive worker agent --slot k`` processes. Rate = (M - 1) / (last - first
  ``spool.completed`` of ``received``) from the audit trail's timestamps (the workers
  run with the real trail, ``synchronous = FULL``), so process start-up is not
  counted. The relay is not started: the hand-offs stay in ``relay/<route>/``.

``--smoke`` runs a few dozen entries so CI proves the benchmark runs; its numbers
mean nothing. Every process started here is stopped by its PID in a ``finally``
(``tests.sites.stop``: SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # the demo site of the test suite

from gateway.audit import AuditEvent  # noqa: E402
from gateway.spool import (  # noqa: E402
    RECEIVED,
    Envelope,
    Origin,
    Recipient,
    RecipientState,
    RecipientStatus,
    Spool,
)
from gateway.spool.consumer import take_queue  # noqa: E402
from gateway.spool.queue import Claimed, Queue  # noqa: E402
from gateway.spool.spooldir import consumer_slot_scope  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402
from tests.sites import CONFIG, MISSIVE, stop  # noqa: E402

SENDER = "alice.martin@chu-a.test"
RECIPIENT = "claire.durand@clinique-b.test"
IN_FLIGHT = 16
SIZE = 10 * 1024


class NoTrail:
    async def record(self, event: AuditEvent) -> object:
        return None


def content(number: int, size: int = SIZE) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: bench {number}\r\n"
        f"Message-ID: <bench-{number}@chu-a.test>\r\n\r\n"
    ).encode()
    line = b"Compte rendu de consultation, ligne de texte ordinaire.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def fill(spool_dir: Path, count: int) -> None:
    async with Spool(spool_dir, audit=NoTrail(), actor="bench", max_message_size=1 << 26) as spool:
        queue = spool.queue(RECEIVED)
        envelope = Envelope(SENDER, (Recipient(RECIPIENT),))
        for number in range(count):
            await queue.add(envelope, Origin("submission"), content(number))


# -- consumer mode (a child process of the spool case) ----------------------------------


async def consume_all(spool_dir: Path) -> None:
    async with Spool(spool_dir, audit=NoTrail(), actor="bench", max_message_size=1 << 26) as spool:
        queue = spool.queue(RECEIVED)
        await take_queue(queue, asyncio.Event(), area="bench", who="bench consumer")
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        running: set[asyncio.Task[None]] = set()
        while (entry := await queue.claim()) is not None:
            running.add(asyncio.ensure_future(process(queue, entry)))
            if len(running) >= IN_FLIGHT:
                _, pending = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running = set(pending)
        await asyncio.gather(*running)


async def process(queue: Queue, entry: Claimed) -> None:
    async for _ in queue.content(entry):
        pass
    done = [RecipientState(RecipientStatus.DELIVERED, 1)] * len(entry.record.envelope.recipients)
    await queue.complete(entry, done)


# -- processes ------------------------------------------------------------------------


@contextmanager
def started(
    commands: list[list[str]], **options: object
) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            processes.append(subprocess.Popen(command, **options))  # type: ignore[call-overload]
        yield processes
    finally:
        for each in processes:
            stop(each)


def spool_case(work: Path, entries: int, consumers: int) -> float:
    spool_dir = work / f"spool-{consumers}-{time.monotonic_ns()}"
    asyncio.run(fill(spool_dir, entries))
    commands = [
        [sys.executable, __file__, "--consumer", str(slot), "--spool", str(spool_dir)]
        for slot in range(consumers)
    ]
    with started(commands, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as processes:
        for each in processes:
            assert each.stdout is not None
            if each.stdout.readline().strip() != b"READY":
                raise RuntimeError("a consumer did not start")
        begin = time.perf_counter()
        for each in processes:
            assert each.stdin is not None
            each.stdin.write(b"go\n")
            each.stdin.flush()
        for each in processes:
            if each.wait(timeout=600) != 0:
                raise RuntimeError(f"a consumer exited with {each.returncode}")
        seconds = time.perf_counter() - begin
    left = os.listdir(spool_dir / RECEIVED / "incoming")
    if left:
        raise RuntimeError(f"{len(left)} entries left in incoming/")
    return entries / seconds


def completed_span(audit: Path) -> tuple[int, float]:
    """How many ``received`` entries the agents completed, and the time between the first
    and the last; (0, 0.0) while a starting worker has created the file but not yet its
    table."""
    connection = sqlite3.connect(f"file:{audit}?mode=ro", uri=True, timeout=30)
    try:
        rows = connection.execute(
            "SELECT time FROM audit_log WHERE type = 'spool.completed' "
            "AND json_extract(details, '$.stage') = 'received' ORDER BY seq"
        ).fetchall()
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise
        return 0, 0.0
    finally:
        connection.close()
    if len(rows) < 2:
        return len(rows), 0.0
    first, last = datetime.fromisoformat(rows[0][0]), datetime.fromisoformat(rows[-1][0])
    return len(rows), (last - first).total_seconds()


def agent_case(work: Path, messages: int, agents: int) -> float:
    from bench_outbound import prepare_site  # the same site as that benchmark

    home = work / f"site-{agents}-{time.monotonic_ns()}"
    home.mkdir()
    site = prepare_site(home, free_port())
    asyncio.run(fill(home / "var" / "spool", messages))
    commands = [
        [*MISSIVE, "worker", "agent", "--config", CONFIG, "--slot", str(slot)]
        for slot in range(agents)
    ]
    log = (home / "agents.log").open("wb")
    deadline = time.monotonic() + 600
    with log, started(commands, cwd=home, stdout=log, stderr=subprocess.STDOUT):
        while (done := completed_span(site.audit)[0] if site.audit.exists() else 0) < messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done} of {messages} messages signed and encrypted")
            time.sleep(0.2)
    count, span = completed_span(site.audit)
    held = os.listdir(home / "var" / "spool" / RECEIVED / "hold")
    if held or count != messages:
        raise RuntimeError(f"{len(held)} held, {count} completed: see {home / 'agents.log'}")
    return (count - 1) / span


def line(label: str, rate: float, baseline: float | None, note: str = "") -> None:
    ratio = "" if baseline is None else f"{rate / baseline:7.2f}"
    print(f"{label:<48} {rate:9,.0f} {ratio:>7}  {note}".rstrip(), flush=True)


def run(args: argparse.Namespace, work: Path) -> None:
    print(f"{'case':<48} {'per s':>9} {'ratio':>7}  note")
    print(f"load average before: {os.getloadavg()}")
    for _ in range(args.runs):
        one = spool_case(work, args.entries, 1)
        line(
            "spool claim+read+complete, 1 process (baseline)", one, None, f"{args.entries} x 10 KB"
        )
        two = spool_case(work, args.entries, 2)
        line("spool claim+read+complete, 2 processes", two, one, f"load {os.getloadavg()[0]:.2f}")
        if args.agent:
            one = agent_case(work, args.messages, 1)
            line(
                "secure agent sign+encrypt, 1 worker (baseline)", one, None, f"{args.messages} msgs"
            )
            two = agent_case(work, args.messages, 2)
            line("secure agent sign+encrypt, 2 workers", two, one, f"load {os.getloadavg()[0]:.2f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-agent", dest="agent", action="store_false")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--consumer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spool", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consumer is not None:
        with consumer_slot_scope(args.consumer):
            asyncio.run(consume_all(args.spool))
        return 0
    if args.smoke:
        args.entries, args.messages = 60, 20
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        run(args, args.dir)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-consumers-") as work:
        run(args, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
