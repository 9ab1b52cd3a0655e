"""Benchmark of the spool's consumer path per entry: claim, read, hand off, complete.

Usage: ``python bench/bench_spool_consumer.py [--smoke] [--entries N] [--syscalls]
[--dir DIR]``.

Issues #6/#7: every consumer stage (secure agent, relay, inbound agent, local delivery)
pays the same spool path per entry (``gateway.spool.queue``). Two cases over a real
spool with the stages a gateway has (received, inbound, local and three relay routes),
N entries of 10 KB, 16 in flight as the stage workers run, no audit trail (a no-op:
this measures the spool alone):

- **agent path**: ``claim`` (reading ahead, as ``consumer.consume`` does), ``read_all``,
  ``hand_off`` to ``relay/a``, ``complete``: what the secure agent and the inbound agent
  pay besides their crypto;
- **relay path**: the children just written: ``claim``, ``read_all``, ``complete``, whose
  removal looks for the parent (tombstone check) and for tombstones of its own
  children: what the relay and local delivery pay besides their network I/O.

Each has a baseline run in the same process: the bare file work of that path with the
same thread pool and concurrency, one I/O job per entry and no bookkeeping (rename into
``active/``, read, for the agent a new file written + fsynced + linked into the next
stage + that directory fsynced, then unlink + fsync of ``active/``). Figures: entries/s,
CPU per entry (user + system of the whole process, from ``getrusage``: the least noisy
figure on a shared machine) and its ratio to the baseline; with ``--syscalls``, system
calls per entry counted by ``perf stat -e raw_syscalls:sys_enter`` attached to this
process around each case (``perf`` must be installed). The stage directories are made
``QUIET_MARGIN`` seconds before the cases, as a running gateway's are old
(``gateway.spool.tombstones``).

"Before/after" figures come from running this file against a copy of the tree as it
was (the spool API it uses exists in both; ``claim`` without ``read_ahead`` is called
plainly). ``--smoke`` runs a few dozen entries so CI proves the benchmark runs.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from gateway.audit import AuditEvent  # noqa: E402
from gateway.spool import (  # noqa: E402
    INBOUND,
    LOCAL,
    RECEIVED,
    Claimed,
    Envelope,
    Origin,
    Queue,
    Recipient,
    RecipientState,
    RecipientStatus,
    Spool,
    relay_stage,
)
from gateway.spool.atomic import sync_directory  # noqa: E402
from gateway.spool.runtime import DEFAULT_IO_THREADS  # noqa: E402

IN_FLIGHT = 16
SIZE = 10 * 1024
ROUTES = ("a", "b", "c")
QUIET = 2.5  # seconds: more than gateway.spool.tombstones.QUIET_MARGIN
READ_AHEAD = 1024 * 1024
ENVELOPE = Envelope("alice.martin@chu-a.test", (Recipient("claire.durand@clinique-b.test"),))
DELIVERED = [RecipientState(RecipientStatus.DELIVERED, 1)]


class NoTrail:
    async def record(self, event: AuditEvent) -> object:
        return None


def content(number: int) -> bytes:
    head = f"From: alice.martin@chu-a.test\r\nSubject: bench {number}\r\n\r\n".encode()
    line = b"Compte rendu de consultation, ligne de texte ordinaire.\r\n"
    return head + line * ((SIZE - len(head)) // len(line))


@dataclass
class Figures:
    entries: int
    seconds: float
    cpu_ms: float
    syscalls: float | None

    @property
    def rate(self) -> float:
        return self.entries / self.seconds


class SyscallCounter:
    """``perf stat`` attached to this process while a case runs (``--syscalls``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._perf: subprocess.Popen[str] | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        self._perf = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(os.getpid())],
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)  # perf attaches

    def stop(self) -> int | None:
        perf, self._perf = self._perf, None
        if perf is None:
            return None
        try:
            perf.send_signal(signal.SIGINT)
            _, errors = perf.communicate(timeout=30)
        finally:
            if perf.poll() is None:
                perf.kill()
                perf.wait()
        for line in errors.splitlines():
            value = line.split(",", 1)[0]
            if value.isdigit():
                return int(value)
        return None


async def measure(
    count: int, run: Callable[[], Awaitable[None]], counter: SyscallCounter
) -> Figures:
    counter.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    began = time.perf_counter()
    await run()
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    calls = counter.stop()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Figures(count, seconds, cpu * 1000 / count, None if calls is None else calls / count)


async def in_flight(
    claim: Callable[[], Awaitable[object | None]], work: Callable[..., Awaitable[None]]
) -> None:
    """Claim and work entries, ``IN_FLIGHT`` at once, until ``claim`` returns None."""
    running: set[asyncio.Task[None]] = set()
    while (entry := await claim()) is not None:
        running.add(asyncio.ensure_future(work(entry)))
        if len(running) >= IN_FLIGHT:
            _, pending = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            running = set(pending)
    await asyncio.gather(*running)


# -- the spool path -------------------------------------------------------------------


def claimer(queue: Queue) -> Callable[[], Awaitable[Claimed | None]]:
    if "read_ahead" in inspect.signature(queue.claim).parameters:
        return lambda: queue.claim(read_ahead=READ_AHEAD)
    return queue.claim  # the tree before read-ahead existed


async def fill(spool: Spool, count: int) -> None:
    for stage in (INBOUND, LOCAL, *(relay_stage(route) for route in ROUTES)):
        spool.queue(stage)
    queue = spool.queue(RECEIVED)
    limit = asyncio.Semaphore(32)

    async def one(number: int) -> None:
        async with limit:
            await queue.add(ENVELOPE, Origin("submission"), content(number))

    await asyncio.gather(*(one(number) for number in range(count)))


async def agent_path(spool: Spool) -> None:
    source, target = spool.queue(RECEIVED), spool.queue(relay_stage("a"))

    async def work(entry: Claimed) -> None:
        data = await source.read_all(entry)
        await source.hand_off(entry, target, "relay:a", ENVELOPE, data)
        await source.complete(entry, DELIVERED)

    await in_flight(claimer(source), work)


async def relay_path(spool: Spool) -> None:
    queue = spool.queue(relay_stage("a"))

    async def work(entry: Claimed) -> None:
        await queue.read_all(entry)
        await queue.complete(entry, DELIVERED)

    await in_flight(claimer(queue), work)


# -- the baseline: the bare file work, one I/O job per entry ----------------------------


def bare_entry(root: str, name: str, hand_off: bool) -> None:
    active = f"{root}/active/{name}"
    os.rename(f"{root}/incoming/{name}", active)
    with open(active, "rb") as file:
        data = file.read()
    if hand_off:
        temp = f"{root}/next/tmp/{name}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, f"{root}/next/incoming/{name}")
        os.unlink(temp)
        sync_directory(Path(f"{root}/next/incoming"))
    os.unlink(active)
    sync_directory(Path(f"{root}/active"))


def bare_fill(root: Path, count: int) -> None:
    for directory in ("incoming", "active", "next/tmp", "next/incoming"):
        (root / directory).mkdir(parents=True)
    for number in range(count):
        (root / "incoming" / f"{number:08d}").write_bytes(content(number))


async def bare_path(root: Path, hand_off: bool, pool: ThreadPoolExecutor) -> None:
    loop = asyncio.get_running_loop()
    names = iter(sorted(os.listdir(root / "incoming")))

    async def claim() -> str | None:
        return next(names, None)

    async def work(name: str) -> None:
        await loop.run_in_executor(pool, bare_entry, str(root), name, hand_off)

    await in_flight(claim, work)


# -- the run ---------------------------------------------------------------------------


async def run(
    work: Path, count: int, counter: SyscallCounter
) -> list[tuple[str, Figures, Figures]]:
    bare_agent, bare_relay = work / "bare-agent", work / "bare-relay"
    bare_fill(bare_agent, count)
    bare_fill(bare_relay, count)
    async with Spool(
        work / "spool", audit=NoTrail(), actor="bench", max_message_size=1 << 26
    ) as spool:
        await fill(spool, count)
        await asyncio.sleep(QUIET)
        await spool.queue(RECEIVED).recover()
        await spool.queue(relay_stage("a")).recover()
        with ThreadPoolExecutor(DEFAULT_IO_THREADS, thread_name_prefix="bare") as pool:
            base_agent = await measure(count, lambda: bare_path(bare_agent, True, pool), counter)
            agent = await measure(count, lambda: agent_path(spool), counter)
            base_relay = await measure(count, lambda: bare_path(bare_relay, False, pool), counter)
            relay = await measure(count, lambda: relay_path(spool), counter)
    return [("agent path", agent, base_agent), ("relay path", relay, base_relay)]


def report(rows: list[tuple[str, Figures, Figures]]) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':<24}{'per s':>9}{'CPU ms':>9}{'CPU ratio':>11}{'syscalls':>10}")
    for name, figures, baseline in rows:
        for label, each in ((f"{name} (baseline)", baseline), (name, figures)):
            calls = "-" if each.syscalls is None else f"{each.syscalls:.1f}"
            ratio = each.cpu_ms / baseline.cpu_ms
            print(f"{label:<24}{each.rate:>9.0f}{each.cpu_ms:>9.3f}{ratio:>11.2f}{calls:>10}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="a few dozen entries")
    parser.add_argument("--entries", type=int, default=2000)
    parser.add_argument("--syscalls", action="store_true", help="count them with perf")
    parser.add_argument("--dir", type=Path, default=None, help="where the spool goes")
    args = parser.parse_args()
    count = 40 if args.smoke else args.entries
    counter = SyscallCounter(args.syscalls)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-consumer-") as work:
        report(asyncio.run(run(Path(work), count, counter)))


if __name__ == "__main__":
    main()
