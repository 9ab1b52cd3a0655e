"""Benchmark of the audit trail: what the hash chain and the sink cost the hot path.

Usage: ``python bench/bench_audit.py [--smoke] [--dir DIR] [--events N]``.

The machine is shared and noisy, so every figure comes with a baseline measured in the
same run, on the same disk, with the same SQLite settings, and the table reports the
ratio to it:

1. store: ``AuditStore.append`` of batches (canonical JSON, SHA-256 chain, row codec,
   head read) vs a plain ``executemany`` INSERT of the same pre-encoded rows into the
   same table, one transaction per batch, WAL, ``synchronous`` FULL then NORMAL;
2. sink: ``await sink.record(event)`` from C concurrent asyncio tasks (group commit
   in the writer thread) vs the same tasks doing ``await asyncio.sleep(0)``: wall time
   per event, CPU time of the event loop's thread per event (what the SMTP front
   pays) and CPU time of the whole process per event (loop + writer thread: what the
   2 cores pay), for C = 1 (each record waits for its own commit) and C = 100; and one
   task awaiting 3 records at once with ``gather`` (as the secure agent does per pass);
3. writer: sealing one event into its row (canonical JSON, SHA-256, row codec: the
   writer thread's CPU, no SQLite) with ``seal_row`` vs the reference path
   ``row_of(seal(...))`` (the C JSON encoder over a built document);
4. verify: rows per second of a full chain walk; building an ``AuditEvent`` (its
   validation runs on the caller's side) vs building a plain frozen dataclass of the
   same fields without any check.

``--smoke`` runs each case briefly (about 2 s in all) so CI proves the benchmark runs;
it does not measure anything worth quoting.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.audit import AuditEvent, AuditSink, AuditStore
from gateway.audit.record import GENESIS_HASH, row_of, seal, seal_row
from gateway.audit.store import _INSERT, _SCHEMA, Synchronous

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Result:
    case: str
    micros_per_event: float
    baseline: float | None = None  # micros per event of the baseline row, for the ratio
    extra: str = ""


@dataclass(frozen=True, slots=True)
class PlainEvent:
    """The baseline of ``AuditEvent(...)``: the same fields, no check at all."""

    type: str
    time: datetime | None = None
    queue_id: str | None = None
    message_id: str | None = None
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    actor: str | None = None
    peer: str | None = None
    cert_serials: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ()
    outcome: str | None = None
    sha256: str | None = None
    details: Mapping[str, str] | None = None


def make_events(count: int, kind: type[AuditEvent] | type[PlainEvent] = AuditEvent) -> list[Any]:
    """Realistic acceptance events with their time set (as the sink would stamp them)."""
    return [
        kind(
            type="smtp.accepted",
            time=T0 + timedelta(milliseconds=index),
            queue_id=f"Q{index:08d}",
            message_id=f"<{index}.7f3a@chu-a.test>",
            mail_from="alice.martin@chu-a.test",
            rcpt_to=("bob.durand@clinique-b.test", "claire.petit@clinique-b.test"),
            actor="alice.martin@chu-a.test",
            peer="127.0.0.1:41234",
            cert_serials=("4f:2a:91:0c",),
            algorithms=("aes-256-gcm", "rsa-oaep"),
            outcome="accepted",
            sha256=f"{index:064x}",
            details={"listener": "submission", "size": "48213"},
        )
        for index in range(count)
    ]


def batches(items: Sequence[AuditEvent], size: int) -> list[Sequence[AuditEvent]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def plain_insert(path: Path, events: Sequence[AuditEvent], size: int, sync: Synchronous) -> float:
    """Baseline: the same rows (pre-encoded, dummy hashes), same table, same settings."""
    rows = [row_of(seal(index + 1, event, GENESIS_HASH)) for index, event in enumerate(events)]
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute(f"PRAGMA synchronous = {sync}")
    connection.executescript(_SCHEMA)
    started = time.perf_counter()
    for start in range(0, len(rows), size):
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(_INSERT, rows[start : start + size])
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def chained_append(path: Path, events: Sequence[AuditEvent], size: int, sync: Synchronous) -> float:
    with AuditStore.open_writer(path, synchronous=sync) as store:
        started = time.perf_counter()
        for batch in batches(events, size):
            store.append(batch)
        return time.perf_counter() - started


async def _run_tasks(
    tasks: int, per_task: int, step: Callable[[int], Awaitable[object]]
) -> tuple[float, float, float]:
    """Wall, loop-thread CPU and process CPU seconds for ``tasks`` tasks awaiting ``step``
    ``per_task`` times."""

    async def worker(offset: int) -> None:
        for index in range(offset, offset + per_task):
            await step(index)

    wall, cpu, process = time.perf_counter(), time.thread_time(), time.process_time()
    await asyncio.gather(*(worker(n * per_task) for n in range(tasks)))
    return (
        time.perf_counter() - wall,
        time.thread_time() - cpu,
        time.process_time() - process,
    )


def sink_case(
    directory: Path,
    events: Sequence[AuditEvent],
    tasks: int,
    sync: Synchronous,
    together: int = 1,
) -> tuple[Result, Result, Result]:
    """``tasks`` tasks, each awaiting ``together`` records at once (``gather``) per step."""
    per_task = len(events) // tasks // together
    total = per_task * tasks * together

    async def measure() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        async def sleep_step(_: int) -> None:
            await asyncio.gather(*(asyncio.sleep(0) for _ in range(together)))

        base = await _run_tasks(tasks, per_task, sleep_step)
        name = f"sink-{tasks}-{together}-{sync}.sqlite"
        async with AuditSink(directory / name, synchronous=sync) as sink:

            async def record_step(index: int) -> None:
                first = index * together
                await asyncio.gather(*(sink.record(events[first + n]) for n in range(together)))

            measured = await _run_tasks(tasks, per_task, record_step)
        group_sizes.append(sink.committed / max(sink.commits, 1))
        return base, measured

    group_sizes: list[float] = []
    (base_wall, base_cpu, base_process), (wall, cpu, process) = asyncio.run(measure())
    shape = f"{tasks:>3} tasks" if together == 1 else f"{tasks:>3} task x{together}"
    label = f"sink {sync:<6} {shape}"
    return (
        Result(
            f"{label}: await record, wall",
            wall / total * 1e6,
            base_wall / total * 1e6,
            f"{total / wall:,.0f} events/s, {group_sizes[0]:.1f} records/commit",
        ),
        Result(f"{label}: await record, loop CPU", cpu / total * 1e6, base_cpu / total * 1e6),
        Result(
            f"{label}: await record, process CPU",
            process / total * 1e6,
            base_process / total * 1e6,
        ),
    )


def writer_case(events: Sequence[AuditEvent]) -> Result:
    """The writer thread's CPU per record, without SQLite: new path vs reference path."""
    started = time.process_time()
    prev_hash = GENESIS_HASH
    for seq, event in enumerate(events, 1):
        prev_hash = row_of(seal(seq, event, prev_hash)).hash
    reference = time.process_time() - started
    started = time.process_time()
    prev_hash = GENESIS_HASH
    for seq, event in enumerate(events, 1):
        prev_hash = seal_row(seq, event, prev_hash).hash
    fast = time.process_time() - started
    per = 1e6 / len(events)
    return Result("writer: seal_row vs row_of(seal()) (CPU)", fast * per, reference * per)


def store_cases(directory: Path, events: Sequence[AuditEvent], size: int) -> list[Result]:
    results: list[Result] = []
    for sync in ("FULL", "NORMAL"):
        plain = plain_insert(directory / f"plain-{sync}.sqlite", events, size, sync)
        chained = chained_append(directory / f"chained-{sync}.sqlite", events, size, sync)
        per = 1e6 / len(events)
        label = f"store {sync:<6} batch={size}"
        results.append(Result(f"{label}: plain INSERT (baseline)", plain * per, plain * per))
        results.append(Result(f"{label}: chained append", chained * per, plain * per))
    return results


def verify_case(directory: Path) -> Result:
    with AuditStore.open_reader(directory / "chained-NORMAL.sqlite") as store:
        started = time.perf_counter()
        report = store.verify()
        elapsed = time.perf_counter() - started
    assert report.ok, report.problem
    return Result(
        "verify: full chain walk", elapsed / report.records * 1e6,
        extra=f"{report.records / elapsed:,.0f} rows/s",
    )  # fmt: skip


def event_case(count: int) -> Result:
    started = time.process_time()
    make_events(count, PlainEvent)
    baseline = time.process_time() - started
    started = time.process_time()
    make_events(count)
    elapsed = time.process_time() - started
    return Result(
        "AuditEvent(...) construction + checks (CPU)", elapsed / count * 1e6, baseline / count * 1e6
    )


def print_table(results: Sequence[Result]) -> None:
    width = max(len(result.case) for result in results)
    print(f"{'case':<{width}}  {'µs/event':>9}  {'ratio':>6}  note")
    for result in results:
        ratio = (
            "" if result.baseline is None else f"{result.micros_per_event / result.baseline:.2f}"
        )
        print(
            f"{result.case:<{width}}  {result.micros_per_event:>9.2f}  {ratio:>6}  {result.extra}"
        )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run briefly (CI)")
    parser.add_argument("--dir", type=Path, help="where to put the databases (default: a temp dir)")
    parser.add_argument("--events", type=int, help="events per case")
    args = parser.parse_args(argv)
    count = args.events or (2_000 if args.smoke else 40_000)
    directory = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir))
    try:
        events = make_events(count)
        results = store_cases(directory, events, size=64)
        results += sink_case(directory, events[: max(200, count // 20)], 1, "FULL")
        results += sink_case(directory, events[: max(300, count // 20)], 1, "FULL", together=3)
        for sync in ("FULL", "NORMAL"):
            results += sink_case(directory, events, 100, sync)
        results.append(writer_case(events))
        results.append(verify_case(directory))
        results.append(event_case(count))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"audit trail benchmark: {count} events per case, databases under {args.dir or '/tmp'}")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
