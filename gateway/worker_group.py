"""The supervisor of the worker processes: ``WorkerGroup``, in the ``serve`` process.

Role (ARCHITECTURE "Each stage can run as its own process"): ``serve`` starts its
workers (``gateway.worker_plan``) as a ``WorkerGroup`` and keeps them running until it
stops. Split out of ``gateway.workers`` (STYLE 11; a pure move, every definition
unchanged), which re-exports every public name.

Supervision: each worker is a child process in its own process group
(``start_new_session``), so that a signal to it reaches everything it forks and a
Ctrl-C in the terminal of ``missive serve`` does not reach it twice. A worker that exits
while the group is running is restarted after a back-off (0.5 s doubling to 30 s; reset
once a worker has run for a minute), so a worker that crashes at start (a broken key
file) does not spin. ``aclose`` sends SIGTERM to every worker's process group, waits up
to ``stop_timeout`` and then SIGKILLs the group, in two rounds (``aclose``). Processes
are addressed only by their own PID / process group, never by name.

How a worker ended decides its log line, and a configuration error (exit 2) is logged
once per streak with the worker's own problem lines, retried at the longest back-off;
the streak ends once a restarted worker has run ``RECOVERED_AFTER`` seconds:
``gateway.worker_exits`` (the decisions are written there).

Each worker gets ``SUPERVISOR_ENV`` (this process's PID: how it tells that it was
orphaned, ``gateway.worker_runtime``) and, when a private directory could be made for
them (``mkdtemp``, mode 0700, removed by ``aclose``), ``PROBLEMS_ENV``: the file where it
writes its problem lines (``gateway.worker_exits``). Its stdin is ``/dev/null``.

Trust level: the supervisor holds no key and runs in the ``serve`` process; the workers
are as described in ``gateway.worker_runtime``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.log import get_logger
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
)
from gateway.worker_runtime import SUPERVISOR_ENV

log = get_logger("workers")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = RETRY_EVERY  # 30 s
STABLE_AFTER = 60.0  # seconds of life after which a crash restarts without delay growth
STOP_TIMEOUT = 10.0
RECOVERED_AFTER = 10.0  # seconds of life that end a worker's configuration-error streak


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
