"""Benchmark of the durable spool: what "250 means on disk" costs, and what state changes cost.

Usage: ``python bench/bench_spool.py [--smoke] [--dir DIR] [--count N] [--concurrency C]
[--size BYTES] [--big-mb M]``.

Every figure comes with baselines measured in the same run, on the same disk, with the
same number of concurrent writers and the same I/O thread pool (the machine is shared
and noisy; compare ratios, not absolute numbers):

1. **plain writes** (baseline, not durable): each message ``open``, ``write``, ``close``,
   ``rename`` into a directory - what a spool without fsync would do;
2. **one fsync per file** (baseline, durable, no group commit): exclusive temp file,
   write, ``fsync``, ``rename``, ``fsync(dir)`` for every message - the textbook
   recipe done naively;
3. **Queue.add**: the spool's add with durability on (file fsync, group-committed
   directory fsync), with a no-op audit trail, then with the real ``AuditSink``
   (SQLite, ``synchronous = FULL``) as the gateway runs it;
4. **Queue.add, one writer**: the latency of an isolated acknowledgement (p50, p99);
5. **claim + complete**: the consumer side, per entry (rename, read, unlink, dir fsync);
6. **defer**: a state change rewrites the file (content copied in the kernel with
   ``copy_file_range``) - measured for a small message and for a big one, next to the
   add of the same size, to show what the "written once" decision costs.

``--smoke`` runs each case briefly (a few seconds in all) so CI proves the benchmark
runs; it does not measure anything worth quoting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from gateway.audit import AuditEvent, AuditSink
from gateway.spool import (
    RECEIVED,
    Envelope,
    MailParams,
    Origin,
    Recipient,
    RecipientState,
    RecipientStatus,
    Spool,
)
from gateway.spool.atomic import sync_directory
from gateway.spool.runtime import DEFAULT_IO_THREADS

MB = 1024 * 1024
ENVELOPE = Envelope(
    "alice.martin@chu-a.test",
    (Recipient("bob.durand@clinique-b.test", notify=("FAILURE",)),),
    MailParams(size=10240, body="8BITMIME"),
)
ORIGIN = Origin(
    "submission",
    client_address="127.0.0.1",
    tls_version="TLSv1.3",
    auth_login="alice.martin@chu-a.test",
)


class NullTrail:
    """An audit trail that commits nothing: isolates the spool's own cost."""

    async def record(self, event: AuditEvent) -> object:
        return None


@dataclass(frozen=True)
class Result:
    case: str
    per_second: float
    baseline: float | None = None
    note: str = ""


def message(size: int) -> bytes:
    head = b"From: alice.martin@chu-a.test\r\nTo: bob.durand@clinique-b.test\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(0, (size - len(head)) // len(line))


async def concurrently(
    count: int, concurrency: int, step: Callable[[int], Awaitable[None]]
) -> float:
    """Run ``step(i)`` for i < count with ``concurrency`` tasks; items per second."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await step(index)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


# -- baselines -----------------------------------------------------------------------------


def plain_write(directory: Path, index: int, data: bytes) -> None:
    temp = directory / f"{index}.tmp"
    with open(temp, "wb") as handle:
        handle.write(data)
    os.rename(temp, directory / f"{index}")


def fsync_per_file(directory: Path, index: int, data: bytes) -> None:
    temp = directory / f"{index}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, directory / f"{index}")
    sync_directory(directory)


async def baseline(
    root: Path, name: str, write: Callable[[Path, int, bytes], None], args: argparse.Namespace
) -> float:
    directory = root / name
    directory.mkdir()
    data = message(args.size)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(DEFAULT_IO_THREADS) as pool:

        async def step(index: int) -> None:
            await loop.run_in_executor(pool, write, directory, index, data)

        return await concurrently(args.count, args.concurrency, step)


# -- the spool -----------------------------------------------------------------------------


async def spool_adds(
    root: Path, args: argparse.Namespace, *, real_audit: bool
) -> tuple[float, str]:
    data = message(args.size)
    sink = AuditSink(root / "audit.sqlite") if real_audit else None
    if sink is not None:
        sink.start()
    spool = Spool(
        root / "spool", audit=sink or NullTrail(), actor="bench", max_message_size=64 * MB
    )
    try:
        queue = spool.queue(RECEIVED)

        async def step(index: int) -> None:
            await queue.add(ENVELOPE, ORIGIN, data)

        rate = await concurrently(args.count, args.concurrency, step)
        committer = spool.committer
        note = f"{committer.fsyncs / max(committer.requests, 1):.2f} dir fsyncs/add"
    finally:
        await spool.aclose()
        if sink is not None:
            await sink.aclose()
    return rate, note


async def single_writer_latency(root: Path, args: argparse.Namespace) -> tuple[float, str]:
    data = message(args.size)
    spool = Spool(root / "spool1", audit=NullTrail(), actor="bench", max_message_size=64 * MB)
    latencies: list[float] = []
    try:
        queue = spool.queue(RECEIVED)
        for _ in range(max(20, args.count // 10)):
            started = time.perf_counter()
            await queue.add(ENVELOPE, ORIGIN, data)
            latencies.append(time.perf_counter() - started)
    finally:
        await spool.aclose()
    cuts = statistics.quantiles(latencies, n=100)
    note = f"p50 {cuts[49] * 1000:.2f} ms, p99 {cuts[98] * 1000:.2f} ms"
    return len(latencies) / sum(latencies), note


async def claim_complete(root: Path, args: argparse.Namespace) -> float:
    spool = Spool(root / "spool", audit=NullTrail(), actor="bench", max_message_size=64 * MB)
    done = [RecipientState(RecipientStatus.DELIVERED, 1)]
    try:
        queue = spool.queue(RECEIVED)

        async def step(index: int) -> None:
            entry = await queue.claim()
            if entry is not None:
                await queue.complete(entry, done)

        return await concurrently(args.count, args.concurrency, step)
    finally:
        await spool.aclose()


async def chunks_of(data: bytes, total: int) -> AsyncIterator[bytes]:
    for _ in range(total // len(data)):
        yield data


async def add_then_defer(root: Path, size: int, rounds: int) -> tuple[float, float]:
    """Seconds per add and per defer of a ``size``-byte message (sequential)."""
    spool = Spool(
        root / f"spool-{size}", audit=NullTrail(), actor="bench", max_message_size=size + MB
    )
    chunk = b"y" * (256 * 1024) if size >= 256 * 1024 else message(size)
    add_time = defer_time = 0.0
    try:
        queue = spool.queue(RECEIVED)
        for _ in range(rounds):
            started = time.perf_counter()
            source = chunks_of(chunk, size) if size >= 256 * 1024 else chunk
            await queue.add(ENVELOPE, ORIGIN, source)
            add_time += time.perf_counter() - started
            entry = await queue.claim()
            assert entry is not None
            state = RecipientState(RecipientStatus.DEFERRED, 1, "451 4.4.1 no answer")
            started = time.perf_counter()
            await queue.defer(entry, entry.record.created + timedelta(hours=1), [state])
            defer_time += time.perf_counter() - started
    finally:
        await spool.aclose()
    return add_time / rounds, defer_time / rounds


# -- report --------------------------------------------------------------------------------


def report(results: list[Result]) -> None:
    print(f"{'case':<52}{'per s':>10}{'ratio':>8}  note")
    for result in results:
        ratio = "" if result.baseline is None else f"{result.per_second / result.baseline:.2f}"
        print(f"{result.case:<52}{result.per_second:>10,.0f}{ratio:>8}  {result.note}")


async def run(args: argparse.Namespace, root: Path) -> list[Result]:
    plain = await baseline(root, "plain", plain_write, args)
    naive = await baseline(root, "naive", fsync_per_file, args)
    spool_rate, spool_note = await spool_adds(root / "a", args, real_audit=False)
    audited_rate, audited_note = await spool_adds(root / "b", args, real_audit=True)
    single_rate, single_note = await single_writer_latency(root, args)
    consume = await claim_complete(root / "a", args)
    size = f"{args.size // 1024} KB, {args.concurrency} writers"
    results = [
        Result(f"plain writes, no fsync (baseline) {size}", plain),
        Result(f"one fsync per file + dir (baseline) {size}", naive, plain),
        Result("Queue.add durable, no audit / vs plain", spool_rate, plain, spool_note),
        Result("Queue.add durable, no audit / vs fsync per file", spool_rate, naive),
        Result(
            "Queue.add durable + AuditSink FULL / vs fsync per file",
            audited_rate,
            naive,
            audited_note,
        ),
        Result("Queue.add durable, 1 writer", single_rate, None, single_note),
        Result("claim + complete (consumer side)", consume, spool_rate, "ratio to add"),
    ]
    rounds = 3 if args.smoke else 10
    for size_bytes in (args.size, args.big_mb * MB):
        add_seconds, defer_seconds = await add_then_defer(root, size_bytes, rounds)
        label = f"{size_bytes // 1024} KB" if size_bytes < MB else f"{size_bytes // MB} MB"
        results.append(
            Result(
                f"add {label} (1 writer)",
                1 / add_seconds,
                None,
                f"{add_seconds * 1000:.1f} ms each",
            )
        )
        results.append(
            Result(
                f"defer {label}: rewrite, copy_file_range / vs add",
                1 / defer_seconds,
                1 / add_seconds,
                f"{defer_seconds * 1000:.1f} ms each",
            )
        )
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--dir", type=Path, help="where the files go (default: a temp dir)")
    parser.add_argument("--count", type=int, help="messages per case")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent writers")
    parser.add_argument("--size", type=int, default=10 * 1024, help="message size in bytes")
    parser.add_argument("--big-mb", type=int, help="size of the big message for defer")
    args = parser.parse_args(argv)
    args.count = args.count or (200 if args.smoke else 4000)
    args.big_mb = args.big_mb or (5 if args.smoke else 50)
    if args.smoke:
        args.concurrency = min(args.concurrency, 16)
    root = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    try:
        report(asyncio.run(run(args, root)))
    finally:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
