"""Benchmark of several SMTP front processes (``[gateway] front_workers``, ``SO_REUSEPORT``).

Usage: ``python bench/bench_front_workers.py [--smoke] [--messages N] [--sessions S]
[--size BYTES] [--rounds R] [--dir DIR] [--split-audit]``.

Client: Postfix ``smtp-source -s 20 -l 10240`` (a new connection per message, TLS off),
as in ``bench_smtp.py`` (whose client it imports). Each round runs, one after the other:

1. **bare aiosmtpd** (baseline): aiosmtpd 1.4.6 with a ``handle_DATA`` that discards,
   in a process of its own (this script with ``--bare-server PORT``), so its CPU is read
   the same way as Missive's;
2. **Missive, 1 front process**: ``missive worker front`` (``front_workers = 1``: a plain
   socket, no ``SO_REUSEPORT``) on the relay listener, with the durable spool (fsync of
   each file and of ``incoming/``) and the audit trail (SQLite ``synchronous = FULL``)
   as shipped;
3. **Missive, 2 front processes**: ``front_workers = 2``, ``missive worker front --slot
   0`` and ``--slot 1`` on the same listener (``SO_REUSEPORT``; the kernel spreads the
   connections), same spool and trail.

With ``--split-audit`` a fourth case, **not as shipped**, runs the 2 processes with one
audit trail each (``[audit] path`` per process): the difference from case 3 is what
sharing one SQLite trail costs (each commit takes the database's write lock, and a
process that finds it taken waits in SQLite's busy handler).

No secure agent runs, so nothing consumes ``received/`` during the measure; each Missive
case checks at the end that exactly N messages were spooled (a refusal would inflate the
rate) and reads how many each process accepted from the audit trail (``spool.added``
per actor). Figures per case: msg/s (N / the client's wall time), the ratio to the bare
aiosmtpd of the same round (target of issue 5: >= 70 %), and the CPU per accepted
message in ms, user + system, summed over the server processes (from
``/proc/<pid>/stat``, read just before and after the client runs: the least noisy
figure on a shared machine). The load average is printed with each round.

``--rounds R`` repeats the sequence, every other round in reverse order (so that a load
that grows or falls during a round does not always favour one case); the table gives the
median rate, the median (and range) of the per-round ratios and the median CPU per
message. ``--smoke`` runs 40 messages once so CI proves the benchmark runs; its numbers
mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench_smtp import RECIPIENT, SENDER, bare_aiosmtpd, smtp_source

from gateway.audit import AuditStore
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.spool import RECEIVED, Spool

BARE = "bare aiosmtpd (baseline)"
TICKS = os.sysconf("SC_CLK_TCK")
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Result:
    case: str
    messages: int
    seconds: float
    cpu_seconds: float  # user + system of the server processes during the client's run
    system_seconds: float  # the system part of it
    accepted_by: tuple[int, ...] = ()  # per front process, from the audit trail

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.messages

    @property
    def system_ms_per_message(self) -> float:
        return 1000 * self.system_seconds / self.messages


# -- the bare aiosmtpd server (run by this script in a child process) ---------------------


async def _serve_bare(port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with bare_aiosmtpd(None, port):
        await stop.wait()


# -- server processes -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a loopback IPv4 socket listening on ``port``."""
    wanted = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == TCP_LISTEN and int(fields[1].split(":")[1], 16) == port:
            wanted.add(f"socket:[{fields[9]}]")
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                return True
        except FileNotFoundError:
            continue
    return False


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of ``pid`` so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime
    return user + system, system


def _cpu_of(pids: list[int]) -> tuple[float, float]:
    totals = [cpu_seconds(pid) for pid in pids]
    return sum(total for total, _ in totals), sum(system for _, system in totals)


@asynccontextmanager
async def servers(commands: Sequence[Sequence[str]], port: int) -> AsyncIterator[list[int]]:
    """Start each command (its own process group), wait until each listens on ``port``,
    yield their PIDs; SIGTERM them at the end (SIGKILL after 20 s), by PID."""
    processes = []
    try:
        for argv in commands:
            processes.append(
                await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.DEVNULL, start_new_session=True
                )
            )
        for process in processes:
            for _ in range(600):
                if process.returncode is not None:
                    raise RuntimeError(f"{commands} exited with {process.returncode}")
                if _listens(process.pid, port):
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"process {process.pid} does not listen on {port}")
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


async def run_case(
    case: str, commands: Sequence[Sequence[str]], port: int, args: argparse.Namespace
) -> Result:
    async with servers(commands, port) as pids:
        before = _cpu_of(pids)
        seconds = await smtp_source(port, args.messages, args.sessions, args.size)
        after = _cpu_of(pids)
    return Result(case, args.messages, seconds, after[0] - before[0], after[1] - before[1])


# -- Missive cases ----------------------------------------------------------------------------


def write_config(work: Path, pki: DevPki, port: int, front_workers: int, trail: str) -> Path:
    """The relay listener on ``127.0.0.1:port``, TLS off, spool and trail in ``work``."""
    (work / "var").mkdir(parents=True, exist_ok=True)
    (work / "var" / "annuaire.ldif").write_text("")
    (work / "conf").mkdir(exist_ok=True)
    (work / "conf" / "users.toml").write_text("")
    (work / "conf" / "users.toml").chmod(0o600)
    path = work / f"missive-{trail}.toml"
    path.write_text(
        f"""\
[gateway]
home = "{work}"
hostname = "mx.chu-a.test"
local_domains = ["chu-a.test"]
front_workers = {front_workers}
[tls]
certificate = "{pki.server_cert("mx.chu-a.test")}"
private_key = "{pki.server_key("mx.chu-a.test")}"
[trust]
anchors = ["{pki.root_cert}"]
intermediates = ["{pki.intermediates}"]
[inbound]
accept = "any"
[audit]
path = "var/{trail}.sqlite"
[[listeners]]
name = "mx"
address = "127.0.0.1:{port}"
kind = "relay"
tls = "none"
max_connections_per_ip = 1000
max_connections = 1000
""",
        encoding="utf-8",
    )
    return path


def front_command(config: Path, slot: int) -> list[str]:
    return [sys.executable, "-m", "gateway", "worker", "front", "--config", str(config),
            "--slot", str(slot)]  # fmt: skip


async def run_missive(
    case: str,
    work: Path,
    pki: DevPki,
    processes: int,
    args: argparse.Namespace,
    *,
    split_audit: bool = False,
) -> Result:
    port = free_port()
    trails = [f"audit-{slot}" if split_audit else "audit" for slot in range(processes)]
    configs = [write_config(work, pki, port, processes, trail) for trail in trails]
    commands = [front_command(config, slot) for slot, config in enumerate(configs)]
    result = await run_case(case, commands, port, args)
    spooled = await _spooled(work / "var" / "spool")
    if spooled != args.messages:
        raise RuntimeError(f"{case}: {spooled} messages spooled, {args.messages} sent")
    accepted: Counter[str] = Counter()
    for trail in sorted(set(trails)):
        accepted.update(_accepted_per_actor(work / "var" / f"{trail}.sqlite"))
    by_slot = tuple(accepted[f"smtp-front-{slot}"] for slot in range(processes))
    if sum(by_slot) != args.messages:
        raise RuntimeError(f"{case}: the audit trail counts {accepted}")
    return Result(
        case, result.messages, result.seconds, result.cpu_seconds, result.system_seconds, by_slot
    )


async def _spooled(root: Path) -> int:
    spool = Spool(root, audit=_NoAudit(), actor="bench", max_message_size=1 << 24)
    try:
        return len(await spool.queue(RECEIVED).scan("incoming"))
    finally:
        await spool.aclose()


class _NoAudit:
    async def record(self, event: object) -> None:
        return None


def _accepted_per_actor(trail: Path) -> Counter[str]:
    with AuditStore.open_reader(trail) as store:
        return Counter(
            record.event.actor or "-"
            for record in store.iter_records()
            if record.event.type == "spool.added" and record.event.details["stage"] == RECEIVED
        )


# -- the run ----------------------------------------------------------------------------------


async def run_round(
    args: argparse.Namespace, work: Path, pki: DevPki, *, reverse: bool = False
) -> list[Result]:
    """Every case once, in order (``reverse``: last case first, so that a load that
    grows or falls during a round does not always favour the same case); the results
    come back in case order, the baseline first."""
    cases = [
        lambda: _run_bare(args),
        lambda: run_missive("Missive, 1 front process", work / "one", pki, 1, args),
        lambda: run_missive("Missive, 2 front processes", work / "two", pki, 2, args),
    ]
    if args.split_audit:
        case = "2 fronts, 1 trail each (*)"
        cases.append(lambda: run_missive(case, work / "split", pki, 2, args, split_audit=True))
    order = list(reversed(range(len(cases)))) if reverse else list(range(len(cases)))
    results: dict[int, Result] = {}
    for index in order:
        results[index] = await cases[index]()
    return [results[index] for index in range(len(cases))]


async def _run_bare(args: argparse.Namespace) -> Result:
    port = free_port()
    bare = [sys.executable, str(Path(__file__).resolve()), "--bare-server", str(port)]
    return await run_case(BARE, [bare], port, args)


async def run_all(args: argparse.Namespace, work: Path) -> list[list[Result]]:
    pki = init_dev_pki(work / "pki", servers=("mx.chu-a.test",))
    rounds = []
    for number in range(args.rounds):
        load_before = os.getloadavg()[0]
        results = await run_round(args, work / f"round{number}", pki, reverse=number % 2 == 1)
        print(
            f"round {number + 1}: load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; "
            + "; ".join(_round_line(results, result) for result in results),
            flush=True,
        )
        rounds.append(results)
    return rounds


def _round_line(results: list[Result], result: Result) -> str:
    ratio = result.per_second / results[0].per_second
    split = "/".join(str(count) for count in result.accepted_by)
    return (
        f"{result.case}: {result.per_second:,.0f} msg/s ({ratio:.0%}), "
        f"{result.cpu_ms_per_message:.2f} ms CPU/msg ({result.system_ms_per_message:.2f} system)"
        + (f", accepted {split}" if split else "")
    )


def report(rounds: list[list[Result]]) -> None:
    """Per case: median rate, median and range of the per-round ratios to the bare
    aiosmtpd of the same round, median CPU ms per message (and its system part)."""
    print(
        f"{'case':<30}{'msg/s':>9}{'vs bare':>9}{'ratio range':>14}{'CPU ms/msg':>12}"
        f"{'of it sys':>11}"
    )
    for index, first in enumerate(rounds[0]):
        per_round = [results[index] for results in rounds]
        rate = statistics.median(result.per_second for result in per_round)
        cpu = statistics.median(result.cpu_ms_per_message for result in per_round)
        system = statistics.median(result.system_ms_per_message for result in per_round)
        ratios = [results[index].per_second / results[0].per_second for results in rounds]
        ratio = "" if index == 0 else f"{statistics.median(ratios):.0%}"
        spread = f"{min(ratios):.0%}-{max(ratios):.0%}" if index and len(ratios) > 1 else ""
        print(f"{first.case:<30}{rate:>9,.0f}{ratio:>9}{spread:>14}{cpu:>12.2f}{system:>11.2f}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="40 messages, one round")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--rounds", type=int, default=1, help="repeat; report medians")
    parser.add_argument("--dir", type=Path, default=None, help="spool and audit go here")
    parser.add_argument(
        "--split-audit",
        action="store_true",
        help="add a case (not as shipped): 2 front processes with one audit trail each",
    )
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_server is not None:
        asyncio.run(_serve_bare(args.bare_server))
        return 0
    if args.smoke:
        args.messages, args.rounds = 40, 1
    print(
        f"client: smtp-source -s {args.sessions} -l {args.size} -m {args.messages}; "
        + SENDER
        + " -> "
        + RECIPIENT
    )
    work = Path(tempfile.mkdtemp(prefix="mv-bench-fronts-", dir=args.dir))
    try:
        rounds = asyncio.run(run_all(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
