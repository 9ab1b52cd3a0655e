"""Worker processes: ``missive worker agent|relay|inbound|delivery|imap|front`` and their
supervisor.

Role (ARCHITECTURE "Each stage can run as its own process"; STYLE §9, least privilege by
process): the secure agent and the relay each run in processes of their own, started by
``missive serve`` through ``start_workers`` and supervised there:

- ``missive worker agent --config FILE [--slot K]`` runs
  ``gateway.relay.agent_stage.run_agent_worker``;
  it loads S/MIME private keys (its configuration is loaded with ``agent_keys=True``),
  as only the inbound worker also does, and it opens no listening socket;
- ``missive worker relay --config FILE`` runs ``gateway.relay.relay_stage.run_relay_worker``
  (configuration loaded with ``agent_keys=False``: it never sees an S/MIME key);
- ``missive worker inbound --config FILE [--slot K]`` runs
  ``gateway.inbound.stage.run_inbound_worker``
  (decrypts and verifies mail for local domains: loads private keys, ``agent_keys=True``);
- ``missive worker delivery --config FILE`` runs
  ``gateway.inbound.delivery.run_delivery_worker`` (LMTP/SMTP/Maildir; no private key);
- ``missive worker imap --config FILE`` runs ``gateway.inbound.imap_fetch.run_imap_worker``
  (one fetcher per ``[[inbound.imap_fetch]]``, into ``inbound/``; no private key);
- ``missive worker front --config FILE [--slot K]`` runs ``gateway.serve.run_front_worker``:
  one more SMTP front process on the same listeners (``SO_REUSEPORT``) when ``[gateway]
  front_workers`` N > 1; ``serve`` is front slot 0 and starts slots 1..N-1. Its slot is
  not a consumer slot (the front only writes into ``received/``) but its share of the
  listener limits (``gateway.smtp.listener``); K must be below N. No private key but
  the TLS ones (``agent_keys=False``). A front worker whose parent dies (``serve``
  killed with SIGKILL: its children live in their own sessions and get no signal)
  stops within ``ORPHAN_CHECK_EVERY`` seconds, as on SIGTERM, so that no front is left
  holding the port beside those of the next ``serve``. A stage worker that ``serve``
  started (``SUPERVISOR_ENV`` set) does the same, so that the next ``serve``'s workers
  do not wait behind orphans holding the consumer locks; one started by hand or by a
  service manager (no ``SUPERVISOR_ENV``) lives on its own.

Each worker stops cleanly on SIGTERM or SIGINT: the stage finishes or abandons its
in-flight entries (an abandoned one stays in ``active/`` and is recovered by the next
worker), closes the spool and the audit trail, and exits 0. A configuration error exits 2
with one line per problem (``gateway.cli`` convention), never a traceback.

Supervisor (``WorkerGroup``): each worker is a child process in its own process group
(``start_new_session``), so that a signal to it reaches everything it forks and a
Ctrl-C in the terminal of ``missive serve`` does not reach it twice. A worker that exits
while the group is running is restarted after a back-off (0.5 s doubling to 30 s; reset
once a worker has run for a minute), so a worker that crashes at start (a broken key
file) does not spin. ``aclose`` sends SIGTERM to every worker's process group, waits up
to ``stop_timeout`` and then SIGKILLs the group. Processes are addressed only by their
own PID / process group, never by name.

How a worker ended decides its log line, and a configuration error (exit 2) is logged
once per streak with the worker's own problem lines: ``gateway.worker_exits`` (the
decisions are written there).

Several crypto workers (ARCHITECTURE "crypto can use every core"): ``[gateway]
crypto_workers`` (``crypto_worker_count``: 0 means one per CPU core the process may run
on) secure agents and as many inbound agents are started, the worker of index K with
``--slot K`` (``worker_commands``; slot 0 has no ``--slot``, so a single worker's command
line is what it always was). Workers of different slots consume the same queue at once,
each claiming into its own active directory; a restarted worker recovers its slot's
entries and never those of a live one (``gateway.spool.queue``). ``--slot`` sets the
slot of every ``Spool`` the worker builds (``gateway.spool.spooldir.consumer_slot_scope``),
so the stage modules need no parameter for it. Two workers of the *same* slot (extra
relay or delivery workers, which stay single consumers) make the second a hot standby
that takes over when the first stops. The crypto of one agent also runs in threads.

Trust level: the supervisor holds no key and runs in the ``serve`` process; the workers
are as described above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.cli_common import SubParsers, add_config_argument
from gateway.config import Config, load_config
from gateway.errors import MissiveError, UsageError
from gateway.log import get_logger, setup_logging
from gateway.spool.layout import CONSUMER_SLOTS
from gateway.spool.spooldir import consumer_slot_scope
from gateway.worker_exits import (
    CONFIG_ERROR_REMINDER,
    CONFIG_ERROR_STATUS,
    PROBLEMS_ENV,
    RETRY_EVERY,
    ConfigErrorStreak,
    config_file_of,
    exit_report,
    next_streak,
    read_problems,
    report_problems,
)

log = get_logger("workers")

WorkerKind = Literal["agent", "relay", "inbound", "delivery", "imap", "front"]
KINDS: tuple[WorkerKind, ...] = ("agent", "relay", "inbound", "delivery", "imap", "front")
KEY_HOLDERS: tuple[WorkerKind, ...] = ("agent", "inbound")  # load S/MIME private keys
CRYPTO_KINDS: tuple[WorkerKind, ...] = ("agent", "inbound")  # one slot per worker
QUEUE_CONSUMERS: tuple[WorkerKind, ...] = ("agent", "relay", "inbound", "delivery")
SLOTTED: tuple[WorkerKind, ...] = (*QUEUE_CONSUMERS, "front")  # take --slot K
DEFAULT_PROGRAM: tuple[str, ...] = (sys.executable, "-P", "-m", "gateway")  # -P: not cwd
BACKOFF_FIRST = 0.5
BACKOFF_MAX = RETRY_EVERY  # 30 s
STABLE_AFTER = 60.0  # seconds of life after which a crash restarts without delay growth
STOP_TIMEOUT = 10.0
SUPERVISOR_ENV = "MISSIVE_SUPERVISOR_PID"  # set for each worker: see ``supervisor_pid``
ORPHAN_CHECK_EVERY = 1.0  # seconds between a front worker's checks of its parent
RECOVERED_AFTER = 10.0  # seconds of life that end a worker's configuration-error streak


# -- missive worker agent|relay ----------------------------------------------------------


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run one worker process (agent, relay, inbound, delivery, imap, front); "
        "missive serve starts them",
        description=(
            "Run one stage of the gateway in the foreground until SIGTERM or Ctrl-C: "
            "'agent' signs and encrypts queued mail, 'relay' delivers it to the next hops, "
            "'inbound' decrypts and verifies mail for local domains, 'delivery' hands it to "
            "the local mail store, 'imap' fetches partner mailboxes, 'front' is one more SMTP "
            "front process on the listeners ([gateway] front_workers). Only 'agent' and "
            "'inbound' load private keys."
        ),
    )
    parser.add_argument("kind", choices=KINDS, help="which stage to run")
    add_config_argument(parser)
    parser.add_argument(
        "--slot",
        type=int,
        default=0,
        metavar="K",
        help=(
            f"consumer slot (0 to {CONSUMER_SLOTS - 1}; default 0): workers of different "
            "slots share the stage's queue, a second worker of one slot waits as a standby; "
            "for 'front', its share of the listener limits (below [gateway] front_workers)"
        ),
    )
    parser.set_defaults(handler=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    """``missive worker KIND``: run the stage; a ``MissiveError`` goes to the supervisor's
    problems file when ``serve`` gave one (``PROBLEMS_ENV``), else to ``gateway.cli``
    (one line per problem on stderr). Either way the exit status is the error's."""
    problems_file = os.environ.pop(PROBLEMS_ENV, "")  # not for the worker's own children
    try:
        return _run_worker(args)
    except MissiveError as error:
        if not problems_file or not report_problems(Path(problems_file), error):
            raise
        return error.status


def _run_worker(args: argparse.Namespace) -> int:
    kind: WorkerKind = args.kind
    slot = checked_slot(kind, args.slot)
    config = load_config(args.config, agent_keys=kind in KEY_HOLDERS)
    if kind == "front":
        checked_front_slot(config, slot)
    setup_logging(config.gateway.log_level)
    try:
        asyncio.run(serve_worker(kind, config, slot=slot))
    except ExceptionGroup as group:  # a stage's task group (the relay's routes)
        reported = user_errors_of(group)
        if reported is None:
            raise
        raise reported from None
    return 0


def user_errors_of(group: BaseExceptionGroup[BaseException]) -> MissiveError | None:
    """The ``MissiveError`` to report for ``group`` when every exception in it is one
    (a planted consumer lock met by the relay's per-route task group, say): one line per
    problem, the first one's exit status, never a traceback. None when any other
    exception is in it: that is a bug, and its traceback is wanted."""
    errors, others = group.split(MissiveError)
    if errors is None or others is not None:
        return None
    leaves = list(_leaves(errors))
    problems = dict.fromkeys(problem for error in leaves for problem in error.problems)
    first = leaves[0]
    reported = MissiveError(tuple(problems))
    reported.status = first.status
    return reported


def _leaves(group: BaseExceptionGroup[MissiveError]) -> list[MissiveError]:
    found: list[MissiveError] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            found.extend(_leaves(error))
        else:
            found.append(error)
    return found


def checked_slot(kind: WorkerKind, slot: int) -> int:
    """``slot`` if ``kind`` can run in it; ``UsageError`` (exit 2) otherwise."""
    if not 0 <= slot < CONSUMER_SLOTS:
        raise UsageError(f"--slot: expected 0 to {CONSUMER_SLOTS - 1}, got {slot}")
    if slot and kind not in SLOTTED:
        raise UsageError(f"--slot: the {kind} worker consumes no queue; it takes no slot")
    return slot


def checked_front_slot(config: Config, slot: int) -> int:
    """``slot`` if it is one of the ``[gateway] front_workers`` front processes' slots."""
    processes = config.gateway.front_workers
    if slot >= processes:
        raise UsageError(
            f"--slot: front slot {slot} needs [gateway] front_workers > {slot} "
            f"(it is {processes} in {config.source})"
        )
    return slot


async def serve_worker(
    kind: WorkerKind, config: Config, stop: asyncio.Event | None = None, *, slot: int = 0
) -> None:
    """Run the stage ``kind`` as consumer ``slot`` until ``stop`` is set (by SIGTERM/SIGINT
    when not given)."""
    stop = stop or stop_on_signals()
    if kind == "front":  # writes into received/, consumes nothing: no consumer slot
        await _serve_front(config, stop, slot)
        return
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    watch = (
        asyncio.create_task(stop_when_orphaned(stop, int(supervisor)))
        if supervisor.isdigit()
        else None  # started by hand or by a service manager: its own life
    )
    try:
        with consumer_slot_scope(slot):
            await _serve_stage(kind, config, stop, slot)
    finally:
        if watch is not None:
            watch.cancel()


async def _serve_front(config: Config, stop: asyncio.Event, slot: int) -> None:
    from gateway.serve import run_front_worker

    log.info("worker.start", kind="front", slot=slot, pid=os.getpid())
    watch = asyncio.create_task(stop_when_orphaned(stop, supervisor_pid()))
    try:
        await run_front_worker(config, stop, slot=slot)
    finally:
        watch.cancel()
    log.info("worker.stopped", kind="front", slot=slot, pid=os.getpid())


def supervisor_pid() -> int:
    """The PID of the ``serve`` that started this worker (``SUPERVISOR_ENV``, set at
    spawn time), else the parent's: read from the environment, not from ``getppid()``
    once the worker has started, because a supervisor killed while the worker was
    still importing would already have left it to init (or a subreaper)."""
    try:
        return int(os.environ[SUPERVISOR_ENV])
    except (KeyError, ValueError):
        return os.getppid()


async def stop_when_orphaned(
    stop: asyncio.Event, parent: int, every: float = ORPHAN_CHECK_EVERY
) -> None:
    """Set ``stop`` once this process is no longer ``parent``'s child (its supervisor
    died without stopping it): a front worker left behind would keep the public port
    and its share of the limits beside the fronts of the next ``serve``, a stage worker
    its consumer lock."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("worker.orphaned", pid=os.getpid(), parent=parent)
            stop.set()
            return
        await asyncio.sleep(every)


async def _serve_stage(kind: WorkerKind, config: Config, stop: asyncio.Event, slot: int) -> None:
    log.info("worker.start", kind=kind, slot=slot, pid=os.getpid())
    if kind == "agent":
        from gateway.relay.agent_stage import run_agent_worker

        await run_agent_worker(config, stop)
    elif kind == "inbound":
        from gateway.inbound.stage import run_inbound_worker

        await run_inbound_worker(config, stop)
    elif kind == "delivery":
        from gateway.inbound.delivery import run_delivery_worker

        await run_delivery_worker(config, stop)
    elif kind == "imap":
        from gateway.inbound.imap_fetch import run_imap_worker

        await run_imap_worker(config, stop)
    else:
        from gateway.relay.relay_stage import run_relay_worker

        await run_relay_worker(config, stop)
    log.info("worker.stopped", kind=kind, slot=slot, pid=os.getpid())


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM, SIGINT or SIGHUP (``serve`` and the workers): each ends
    in the same clean stop. SIGHUP is the hang-up of the terminal or ssh session a
    ``serve`` was started from; without a handler it would kill ``serve`` at once,
    without stopping its workers or recording ``gateway.stop``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    return stop


# -- the supervisor --------------------------------------------------------------------


@dataclass
class Worker:
    """One supervised worker: its command, its current process, how often it restarted."""

    name: str
    argv: tuple[str, ...]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    exits: list[int] = field(default_factory=list)
    streak: ConfigErrorStreak | None = None  # while its restarts exit 2
    delay: float | None = None  # before its next restart after a crash (None: the first)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def kind(self) -> str:
        """``agent`` for ``agent-2`` (``worker_commands`` names), else the name."""
        return self.name.rpartition("-")[0] or self.name


class WorkerGroup:
    """Child worker processes, restarted with back-off until ``aclose`` (module docstring)."""

    def __init__(
        self,
        commands: Sequence[tuple[str, Sequence[str]]],
        *,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        stop_timeout: float = STOP_TIMEOUT,
        recovered_after: float = RECOVERED_AFTER,
        config_error_reminder: float = CONFIG_ERROR_REMINDER,
    ) -> None:
        self.workers = [Worker(name, tuple(argv)) for name, argv in commands]
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.stop_timeout = stop_timeout
        self.recovered_after = recovered_after
        self.config_error_reminder = config_error_reminder
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._started: dict[str, asyncio.Event] = {}
        self._problems_dir: Path | None = None

    async def start(self) -> None:
        """Spawn every worker (raises ``OSError`` if one cannot be spawned at all)."""
        self._problems_dir = _private_temporary_dir()
        for worker in self.workers:
            await self._spawn(worker)
        self._tasks = [asyncio.create_task(self._supervise(w)) for w in self.workers]

    def _problems_file(self, worker: Worker) -> Path | None:
        """Where ``worker`` writes its problem lines; None without a directory for them
        (the worker then prints them on stderr)."""
        return None if self._problems_dir is None else self._problems_dir / worker.name

    async def _spawn(self, worker: Worker) -> None:
        environment = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        problems = self._problems_file(worker)
        if problems is not None:
            with contextlib.suppress(OSError):  # a stale file would be read as this run's
                problems.unlink(missing_ok=True)
            environment[PROBLEMS_ENV] = str(problems)
        worker.process = await asyncio.create_subprocess_exec(
            *worker.argv,
            start_new_session=True,
            stdin=asyncio.subprocess.DEVNULL,
            env=environment,
        )
        worker.started_at = time.monotonic()
        log.info("worker.spawned", worker=worker.name, pid=worker.process.pid)
        self._started.setdefault(worker.name, asyncio.Event()).set()

    async def _supervise(self, worker: Worker) -> None:
        while True:
            status = await self._wait_exit(worker)
            worker.exits.append(status)
            if self._closing:
                return
            delay = self._log_exit(worker, status, read_problems(self._problems_file(worker)))
            self._started[worker.name].clear()
            await asyncio.sleep(delay)
            if self._closing:
                return
            try:
                await self._spawn(worker)
            except OSError as error:  # try again after the next back-off
                log.error("worker.spawn_failed", worker=worker.name, error=str(error))
                continue
            worker.restarts += 1

    async def _wait_exit(self, worker: Worker) -> int:
        """The exit status of ``worker``'s process; logs ``worker.recovered`` once it has
        run ``recovered_after`` seconds after a configuration-error streak."""
        assert worker.process is not None
        waiting = asyncio.ensure_future(worker.process.wait())
        try:
            if worker.streak is not None:
                done, _ = await asyncio.wait({waiting}, timeout=self.recovered_after)
                if not done and not self._closing:  # not a worker that serve is stopping
                    self._recovered(worker)
            return await waiting
        finally:
            waiting.cancel()  # only if this task is cancelled first

    def _recovered(self, worker: Worker) -> None:
        streak = worker.streak
        assert streak is not None
        worker.streak = None
        worker.delay = None  # the back-off starts again from the first
        log.info(
            "worker.recovered",
            worker=worker.name,
            kind=worker.kind,
            pid=worker.pid,
            failing_for=f"{time.monotonic() - streak.since:.0f}s",
            retries=streak.retries,
        )

    def _log_exit(self, worker: Worker, status: int, problems: tuple[str, ...]) -> float:
        """Log how ``worker`` ended (module docstring); the delay before its restart."""
        now = time.monotonic()
        report = exit_report(status, retry_every=self.backoff_max)
        fields: dict[str, Any] = {
            "worker": worker.name,
            "kind": worker.kind,
            "pid": worker.pid,
            "status": status,
            **report.fields,
        }
        if problems:
            fields["problems"] = "; ".join(problems)
        if status == CONFIG_ERROR_STATUS:
            return self._log_config_error(worker, problems, now, fields)
        worker.streak = None
        if now - worker.started_at >= STABLE_AFTER:
            worker.delay = None
        delay = self.backoff_first if worker.delay is None else worker.delay
        worker.delay = min(delay * 2, self.backoff_max)
        _LEVELS[report.level](report.event, **fields, restart_in=f"{delay:.1f}s")
        return delay

    def _log_config_error(
        self, worker: Worker, problems: tuple[str, ...], now: float, fields: dict[str, Any]
    ) -> float:
        """One line per streak of exits 2 (module docstring); the longest back-off."""
        worker.streak, first_or_news = next_streak(
            worker.streak, problems, now, self.config_error_reminder
        )
        streak = worker.streak
        if not first_or_news:
            log.debug("worker.config_error_retry", worker=worker.name, retries=streak.retries)
            return self.backoff_max
        if streak.retries:
            fields["failing_for"] = f"{now - streak.since:.0f}s"
            fields["retries"] = streak.retries
        fields.setdefault("problems", "(none reported)")
        log.error(
            "worker.config_error",
            **fields,
            config=config_file_of(worker.argv),
            restart_in=f"{self.backoff_max:.1f}s",
        )
        return self.backoff_max

    async def wait_running(self, name: str) -> Worker:
        """Wait until worker ``name`` has a live process (tests, ``serve``'s ready line)."""
        worker = next(w for w in self.workers if w.name == name)
        await self._started.setdefault(name, asyncio.Event()).wait()
        return worker

    async def aclose(self) -> None:
        """SIGTERM every worker's process group, wait, SIGKILL what is left (idempotent).

        Twice: a restart that a supervising task was spawning when the first round
        started (its worker died just before) is alive only once that round ends; no
        task spawns anything after it is cancelled (a spawn cancelled midway is killed
        and reaped by asyncio)."""
        self._closing = True
        await self._stop_live()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._stop_live()
        if self._problems_dir is not None:
            shutil.rmtree(self._problems_dir, ignore_errors=True)

    async def _stop_live(self) -> None:
        """SIGTERM the process group of every live worker, wait up to ``stop_timeout``,
        then SIGKILL the groups still led by a live worker."""
        live = [w.process for w in self.workers if w.process and w.process.returncode is None]
        for process in live:
            _signal_group(process.pid, signal.SIGTERM)
        if live:
            waits = [asyncio.create_task(p.wait()) for p in live]
            _, pending = await asyncio.wait(waits, timeout=self.stop_timeout)
            for process in live:
                if process.returncode is None:
                    log.warning("worker.kill", pid=process.pid)
                    _signal_group(process.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending)


def _private_temporary_dir() -> Path | None:
    """A new directory only this user can use (``mkdtemp``: mode 0700, a random name),
    for the workers' problems files; None if none can be made (logged)."""
    try:
        return Path(tempfile.mkdtemp(prefix="missive-workers-"))
    except OSError as error:
        log.warning("worker.no_problems_dir", error=str(error), effect="problems on stderr")
        return None


_LEVELS: dict[str, Callable[..., None]] = {"warning": log.warning, "error": log.error}


def _signal_group(pid: int, signum: signal.Signals) -> None:
    """Signal the process group of a worker (its PID: it leads its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def crypto_worker_count(config: Config) -> int:
    """How many secure agents and how many inbound agents to start: ``[gateway]
    crypto_workers``, or when it is 0 the CPU cores this process may run on (at most
    ``CONSUMER_SLOTS``)."""
    configured = config.gateway.crypto_workers
    if configured:
        return configured
    return max(1, min(len(os.sched_getaffinity(0)), CONSUMER_SLOTS))


def worker_commands(
    config: Config,
    *,
    agents: int,
    relays: int,
    inbound: int = 0,
    delivery: int = 0,
    imap: int = 0,
    fronts: int = 0,
    program: Sequence[str] = DEFAULT_PROGRAM,
) -> list[tuple[str, tuple[str, ...]]]:
    """``(name, argv)`` of each worker: ``<program> worker <kind> --config <file>``, plus
    ``--slot K`` for the K-th (from 0) agent or inbound worker when K > 0; extra relay
    and delivery workers get no slot (standbys of slot 0). The ``fronts`` extra front
    processes come first, ``front-K`` with ``--slot K`` (K from 1: ``serve`` is front
    slot 0)."""
    if fronts >= CONSUMER_SLOTS:
        raise ValueError(f"at most {CONSUMER_SLOTS - 1} front workers besides serve")
    commands = [
        (f"front-{slot}", (*program, "worker", "front", "--config", str(config.source),
                           "--slot", str(slot)))
        for slot in range(1, fronts + 1)
    ]  # fmt: skip
    counts = (
        ("agent", agents),
        ("relay", relays),
        ("inbound", inbound),
        ("delivery", delivery),
        ("imap", imap),
    )
    if fronts < 0 or any(count < 0 for _, count in counts):
        raise ValueError("the number of workers cannot be negative")
    if agents > CONSUMER_SLOTS or inbound > CONSUMER_SLOTS:
        raise ValueError(f"at most {CONSUMER_SLOTS} agent or inbound workers (one per slot)")
    for kind, count in counts:
        for index in range(count):
            argv = (*program, "worker", kind, "--config", str(config.source))
            if index and kind in CRYPTO_KINDS:
                argv = (*argv, "--slot", str(index))
            commands.append((f"{kind}-{index + 1}", argv))
    return commands


async def start_workers(
    config: Config,
    *,
    agents: int,
    relays: int,
    inbound: int = 0,
    delivery: int = 0,
    imap: int = 0,
    fronts: int = 0,
    program: Sequence[str] = DEFAULT_PROGRAM,
) -> WorkerGroup:
    """Spawn ``fronts`` extra SMTP front, ``agents`` secure agent, ``relays`` relay,
    ``inbound`` inbound agent, ``delivery`` local delivery and ``imap`` IMAP fetcher
    workers for ``config``'s file (``serve`` passes ``crypto_worker_count(config)`` for
    ``agents`` and ``inbound`` and ``[gateway] front_workers`` - 1 for ``fronts``).

    ``program`` is how to run the ``missive`` command line (default: this Python with
    ``-m gateway``). The caller must ``aclose`` the group."""
    commands = worker_commands(
        config,
        agents=agents,
        relays=relays,
        inbound=inbound,
        delivery=delivery,
        imap=imap,
        fronts=fronts,
        program=program,
    )
    group = WorkerGroup(commands)
    try:
        await group.start()
    except BaseException:
        await group.aclose()
        raise
    return group


# -- python -m gateway.workers (the same command without gateway.cli) ---------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.workers worker KIND --config FILE [--slot K]``."""
    parser = argparse.ArgumentParser(prog="missive")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except MissiveError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return error.status
    return status


if __name__ == "__main__":
    sys.exit(main())
